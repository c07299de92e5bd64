import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import pino from 'pino';
import { Agent, fetch } from 'undici';
import { loadConfig, type Config } from '../../src/config.js';
import type { Emulator } from '../../src/emulator/index.js';
import { startService, type Service } from '../../src/service.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';
import { startServiceProcess, type NodeChild } from '../lib/procs.js';

export const BENCH_API_KEY = 'sk-bench-0123456789abcdef0123';

/**
 * What the bench sets in the service's environment; everything else is the
 * service's default. One key makes every request, so the rate limit is
 * lifted to measure the limiter's cost, not its refusals; the minimum drain
 * at shutdown only delays the end of the run.
 */
export function benchServiceEnv(falBaseUrl: string, dataDir: string): Record<string, string> {
  return {
    API_KEYS: BENCH_API_KEY,
    FAL_BASE_URL: falBaseUrl,
    FAL_KEY: 'bench-fal-key',
    DATA_DIR: dataDir,
    DEFAULT_RPM_LIMIT: '1000000',
    SHUTDOWN_MIN_DRAIN_MS: '0',
  };
}

/**
 * Path (b): our service as deployed, in a process of its own started the way
 * `npm start` starts it (`node --import tsx src/main.ts`, so with the V8
 * memory mode main.ts sets), configured by its environment only: real HTTP
 * on loopback, a real bearer key, the SQLite ledger in a fresh directory on
 * the machine's disk (os.tmpdir() here is ext4, not tmpfs, so commits pay a
 * real fsync), info-level logs to a file.
 */
export async function serviceProcessPath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  falBaseUrl: string;
  body: Record<string, unknown>;
  /** Holds the service's log file and its data directory; the caller removes it. */
  workDir: string;
  env?: Record<string, string>;
  nodeArgs?: string[];
}): Promise<BenchPath & { url: string; pid: number; logFile: string }> {
  const dataDir = await mkdtemp(join(opts.workDir, 'service-data-'));
  const child = await startServiceProcess(opts.workDir, { ...benchServiceEnv(opts.falBaseUrl, dataDir), ...opts.env }, `service-${opts.id}`, opts.nodeArgs);
  const path = httpImagesPath({ ...opts, url: `${child.url}/v1/images/generations`, authorization: `Bearer ${BENCH_API_KEY}` });
  return {
    ...path,
    url: child.url,
    pid: child.pid,
    logFile: child.logFile,
    processes: [{ name: 'service', pid: child.pid }],
    close: closeChildPath(path, child, dataDir),
  };
}

/** Closes a path's client, then its process (which must exit cleanly), then removes the process's data directory. */
export function closeChildPath(path: BenchPath, child: NodeChild, dataDir: string): () => Promise<void> {
  return async () => {
    await path.close();
    const code = await child.stop();
    if (code !== 0) throw new Error(`${child.name} exited with ${code}; see ${child.logFile}`);
    await rm(dataDir, { recursive: true, force: true });
  };
}

/**
 * POST the bench body to an images endpoint answering the service's shape
 * (`meta.fal_request_id`), with an undici keep-alive client like an SDK in
 * production. A gateway closes idle connections after its own keep-alive
 * timeout (65 s for the service, `KEEP_ALIVE_TIMEOUT_MS`; 5 s for Portkey's
 * Node server); where that is shorter than the other paths' rounds, a round's
 * first requests reconnect, inside the unrecorded warm-up.
 */
export function httpImagesPath(opts: { id: string; label: string; upstream: BenchUpstream; url: string; authorization: string; body: Record<string, unknown> }): BenchPath {
  const payload = JSON.stringify(opts.body);
  const headers = { authorization: opts.authorization, 'content-type': 'application/json' };
  const client = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    async call(signal) {
      const res = await fetch(opts.url, { method: 'POST', headers, body: payload, signal, dispatcher: client });
      const json = (await res.json()) as { meta?: { fal_request_id?: string }; error?: { message?: string } };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${json.error?.message ?? 'no error message'}`);
      return { upstreamId: json.meta?.fal_request_id, doneAtMs: Date.now() };
    },
    async close() {
      await client.close();
    },
  };
}

/**
 * Diagnostic only: the service in this process, so the diagnostic pass can
 * wrap its gateway's and ledger's methods to stamp each step. Shares the
 * event loop with the client and the emulator; its figures are not the
 * deployed service's.
 */
export async function inProcessServicePath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  emulator: Emulator;
  body: Record<string, unknown>;
  env?: Record<string, string>;
  /**
   * Diagnostic only: the service's `SQLITE_SYNCHRONOUS` setting (default
   * normal), checked on the ledger's connection after start-up, to measure
   * what the other level costs.
   */
  sqliteSynchronous?: 'normal' | 'full';
}): Promise<BenchPath & { service: Service; config: Config; dataDir: string }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-bench-'));
  // One log line per request is part of the cost; /dev/null keeps the
  // write(2) and the JSON encoding without filling the terminal.
  const logger = pino({ level: opts.env?.LOG_LEVEL ?? 'info' }, pino.destination({ dest: '/dev/null', sync: true }));
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: '0',
    ...benchServiceEnv(opts.emulator.url, dataDir),
    ...(opts.sqliteSynchronous ? { SQLITE_SYNCHRONOUS: opts.sqliteSynchronous } : {}),
    ...opts.env,
  });
  const service = await startService(config, { logger, emulator: opts.emulator });
  if (opts.sqliteSynchronous) await checkSynchronous(service, opts.sqliteSynchronous);
  const path = httpImagesPath({ ...opts, url: `${service.url}/v1/images/generations`, authorization: `Bearer ${BENCH_API_KEY}` });
  return {
    ...path,
    service,
    config,
    dataDir,
    async close() {
      await path.close();
      await service.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The level the ledger's one SQLite connection runs at, read back from SQLite itself. */
async function checkSynchronous(service: Service, level: 'normal' | 'full'): Promise<void> {
  if (service.database.dialect !== 'sqlite') throw new Error('sqliteSynchronous needs the SQLite ledger');
  const { rows } = await sql<{ synchronous: number | bigint }>`pragma synchronous`.execute(service.database.db);
  const got = Number(rows[0]?.synchronous);
  const want = level === 'normal' ? 1 : 2;
  if (got !== want) throw new Error(`pragma synchronous is ${got}, wanted ${want}`);
}
