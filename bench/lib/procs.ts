import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The service and the emulator as separate processes, the way they run in
 * production: their memory, sockets and CPU are then theirs alone and can be
 * read from /proc, instead of being mixed with the load generator's.
 */

/**
 * The emulator's account concurrency in every bench: fal limits concurrent
 * jobs per account (the emulator's default is 10), but the benches measure
 * the gateway, so they lift the limit explicitly, above any load they send.
 */
export const BENCH_FAL_CONCURRENCY = '100000';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface NodeChild {
  readonly name: string;
  readonly pid: number;
  /** The URL the process printed when it started listening. */
  readonly url: string;
  /** stdout and stderr of the process (kept for post-mortems; the caller removes the directory). */
  readonly logFile: string;
  /** Resolves with the exit code (or the signal's name) once the process is gone. */
  readonly exited: Promise<number | string>;
  /** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
  stop(graceMs?: number): Promise<number | string>;
}

const live = new Set<ChildProcess>();

// Whatever ends the bench (an exception, Ctrl-C, a time budget), no child may
// outlive it: a forgotten service keeps its port and its memory.
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    for (const c of live) c.kill('SIGKILL');
    process.exit(130);
  });
}

/**
 * Only what a child needs from our environment: the bench's own shell may
 * carry FAL_KEY, DATABASE_URL and the like, which would silently change
 * what is measured.
 */
function baseEnv(): Record<string, string> {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ'];
  return Object.fromEntries(keep.flatMap((k) => (process.env[k] !== undefined ? [[k, process.env[k]!]] : [])));
}

export async function spawnNode(opts: {
  name: string;
  /** Path relative to the repository root (or absolute), run as `node --import tsx <script>`. */
  script: string;
  /** Arguments after the script. */
  args?: string[];
  /** False runs plain JavaScript without the tsx loader (a published package's own entry). */
  tsx?: boolean;
  env: Record<string, string>;
  logDir: string;
  /** First capture group is the URL. */
  urlPattern: RegExp;
  startTimeoutMs?: number;
  nodeArgs?: string[];
}): Promise<NodeChild> {
  const logFile = join(opts.logDir, `${opts.name}.log`);
  // A file, not a pipe: an info-level access log per request would otherwise
  // cost this process CPU to drain, or block the child when nobody drains it.
  // Truncated: a name reused in one run must not find the previous process's URL in its log.
  const fd = openSync(logFile, 'w');
  const loader = opts.tsx === false ? [] : ['--import', 'tsx'];
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), ...loader, opts.script, ...(opts.args ?? [])], {
    cwd: REPO,
    env: { ...baseEnv(), ...opts.env },
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  live.add(child);
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve(code ?? signal ?? 'unknown');
    });
  });

  const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
  let url: string | undefined;
  let gone: number | string | undefined;
  void exited.then((c) => (gone = c));
  while (url === undefined) {
    const m = opts.urlPattern.exec(readFileSync(logFile, 'utf8'));
    if (m) url = m[1]!;
    else if (gone !== undefined) throw new Error(`${opts.name} exited (${gone}) before listening; see ${logFile}:\n${tail(logFile)}`);
    else if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${opts.name} did not print its URL in time; see ${logFile}:\n${tail(logFile)}`);
    } else await new Promise((r) => setTimeout(r, 50));
  }

  return {
    name: opts.name,
    pid: child.pid!,
    url,
    logFile,
    exited,
    async stop(graceMs = 10_000) {
      if (gone !== undefined) return gone;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export const SERVICE_URL = /fal images gateway listening on (http:\/\/\S+)/;
export const EMULATOR_URL = /fal emulator listening on (http:\/\/\S+)/;

export function startEmulatorProcess(logDir: string, env: Record<string, string>, name = 'emulator'): Promise<NodeChild> {
  return spawnNode({ name, script: 'src/emulator/main.ts', env: { PORT: '0', HOST: '127.0.0.1', ...env }, logDir, urlPattern: EMULATOR_URL });
}

export function startServiceProcess(logDir: string, env: Record<string, string>, name = 'service', nodeArgs: string[] = []): Promise<NodeChild> {
  return spawnNode({ name, script: 'src/main.ts', env: { PORT: '0', HOST: '127.0.0.1', ...env }, logDir, urlPattern: SERVICE_URL, nodeArgs });
}

/**
 * A port nobody listens on right now, for a service that must know its own
 * URL before it starts (PUBLIC_BASE_URL in webhook mode). Another process
 * could take it in between; on loopback in a bench that is a small risk.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}
