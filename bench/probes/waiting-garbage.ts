/**
 * What N waiting jobs cost the service's RSS, and why, in a minute rather
 * than bench/waiting.ts's quarter of an hour: the service alone in a child
 * process (test/fixtures/waiting-service.ts) run with `--trace-gc-nvp`, N
 * image requests held at fal by the emulator's never_finish fault, sent as
 * bench/waiting.ts sends them (at most 64 between sent and submitted).
 *
 * Reported per waiting job:
 * - promoted: bytes young collections moved into the old generation while
 *   the jobs were submitted (`promoted=` of every scavenge in V8's trace).
 *   Old-space garbage stays in RSS until a full collection, and while jobs
 *   wait almost none runs: this is what separated RSS from the live heap.
 * - promoted/s (polling): the same while the jobs wait, per job and second.
 * - old used: old-space bytes in use at the plateau, before any forced
 *   collection (live objects and not yet collected garbage).
 * - RSS: the kernel's resident set at the plateau minus at idle.
 * - live: the V8 heap after full collections (what the test guards).
 *
 *   [V8_DEFAULTS=1] npx tsx bench/probes/waiting-garbage.ts [--jobs=2000] [--mode=polling|webhook] [--plateau=10] [--node-args='--flag ...']
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import { createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { startEmulator } from '../../src/emulator/index.js';

const { values: args } = parseArgs({
  options: { jobs: { type: 'string', default: '2000' }, mode: { type: 'string', default: 'polling' }, plateau: { type: 'string', default: '10' }, 'node-args': { type: 'string', default: '' } },
});
const JOBS = Number(args.jobs);
const mode = args.mode as 'polling' | 'webhook';
const PLATEAU_S = Number(args.plateau);
const WINDOW = 64;
const KEY = 'sk-test-0123456789abcdef';
const FIXTURE = fileURLToPath(new URL('../../test/fixtures/waiting-service.ts', import.meta.url));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** User + system CPU seconds of a process so far. */
function cpuOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

const emulator = await startEmulator({ port: 0, latencyMs: 20, imageMode: 'cheap', concurrency: 100_000 } as Parameters<typeof startEmulator>[0]);
const dataDir = await mkdtemp(join(tmpdir(), 'gw-garbage-'));
const port = await freePort();
const env: Record<string, string> = {
  PATH: process.env.PATH ?? '',
  PORT: String(port),
  HOST: '127.0.0.1',
  API_KEYS: KEY,
  FAL_BASE_URL: emulator.url,
  FAL_KEY: 'fal-test-key',
  DATA_DIR: dataDir,
  LOG_LEVEL: 'error',
  MAX_IN_FLIGHT: String(JOBS * 2),
  DEFAULT_RPM_LIMIT: '0',
  REQUEST_TIMEOUT_MS: '600000',
  RECONCILE_INTERVAL_MS: '0',
  // V8_DEFAULTS=1: the service on Node's heap defaults, without src/optimize-for-size.ts.
  ...(process.env.V8_DEFAULTS ? { V8_DEFAULTS: process.env.V8_DEFAULTS } : {}),
  ...(mode === 'polling' ? { STATUS_STREAMS_MAX: '0' } : { FAL_WEBHOOKS: 'true', PUBLIC_BASE_URL: `http://127.0.0.1:${port}`, FAL_WEBHOOK_GRACE_MS: '600000' }),
};
const child = fork(FIXTURE, { env, execArgv: [...args['node-args']!.split(' ').filter(Boolean), '--expose-gc', '--trace-gc-nvp', '--import', 'tsx'], stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
let promoted = 0;
createInterface({ input: child.stdout! }).on('line', (line) => {
  const m = / gc=s .* promoted=(\d+) /.exec(line);
  if (m) promoted += Number(m[1]);
});
function ask<T>(msg: object, key: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: Record<string, unknown>) => {
      if (key in m) {
        child.off('message', on);
        resolve(m[key] as T);
      }
    };
    child.on('message', on);
    child.send(msg);
  });
}
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const reqs: http.ClientRequest[] = [];
function post(url: string, prompt: string): Promise<number> {
  const req = http.request(url, { method: 'POST', agent, headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' } });
  reqs.push(req);
  const done = new Promise<number>((resolve) => {
    req.on('response', (res) => res.resume().on('end', () => resolve(res.statusCode ?? 0)));
    req.on('error', () => resolve(-1));
  });
  req.end(JSON.stringify({ model: 'alibaba/z-image-turbo', prompt, size: '512x512' }));
  return done;
}
const held = () => emulator.jobs().filter((j) => j.status !== 'COMPLETED').length;
try {
  const url = `${await ask<string>({}, 'url')}/v1/images/generations`;
  for (let i = 0; i < 5; i++) await Promise.all(Array.from({ length: 20 }, (_, k) => post(url, `warm ${i} ${k}`)));
  const live0 = await ask<number>({ measure: true }, 'heapUsed');
  await sleep(2000);
  const rss0 = rssOf(child.pid!);
  const old0 = await ask<number>({ oldSpace: true }, 'oldUsed');
  // SAMPLE=FILE: V8's sampling heap profile of what the ramp (webhook) or the plateau (polling) left uncollected.
  const sample = process.env.SAMPLE;
  if (sample && mode === 'webhook') await ask({ sample: 'start' }, 'sampling');
  emulator.armFault({ kind: 'never_finish', times: JOBS });
  promoted = 0;
  const cpu0 = cpuOf(child.pid!);
  const t0 = performance.now();
  let sent = 0;
  while (sent < JOBS) {
    const room = Math.min(JOBS - sent, held() + WINDOW - sent);
    for (let i = 0; i < room; i++) void post(url, `waiting ${sent++}`);
    await sleep(20);
  }
  while (held() < JOBS) await sleep(50);
  const rampS = (performance.now() - t0) / 1000;
  const rampCpuMs = ((cpuOf(child.pid!) - cpu0) * 1000) / JOBS;
  await sleep(500);
  const rampPromoted = promoted;
  promoted = 0;
  if (sample && mode === 'polling') await ask({ sample: 'start' }, 'sampling');
  const t1 = performance.now();
  const rss: number[] = [];
  for (let i = 0; i < PLATEAU_S * 2; i++) {
    await sleep(500);
    rss.push(rssOf(child.pid!));
  }
  const plateauPromotedPerS = promoted / ((performance.now() - t1) / 1000);
  const old1 = await ask<number>({ oldSpace: true }, 'oldUsed');
  if (sample) await ask({ sample }, 'sampled');
  rss.sort((a, b) => a - b);
  const rss1 = rss[rss.length >> 1]!;
  const live1 = await ask<number>({ measure: true }, 'heapUsed');
  const per = (b: number) => `${(b / JOBS / 1024).toFixed(1)} KiB`;
  console.log(
    `${mode} ${JOBS} jobs (ramp ${rampS.toFixed(1)} s, ${rampCpuMs.toFixed(2)} ms CPU/job, load ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]}): ` +
      `promoted ${per(rampPromoted)}, promoted/s ${(plateauPromotedPerS / JOBS).toFixed(0)} B, old used ${per(old1 - old0)}, RSS ${per(rss1 - rss0)}, live ${per(live1 - live0)}`,
  );
} finally {
  child.kill('SIGKILL');
  for (const r of reqs) r.destroy();
  agent.destroy();
  await emulator.close();
  await rm(dataDir, { recursive: true, force: true });
}
