/**
 * What a request costs while it waits on fal, guarded: 1,000 image requests
 * held at fal (the emulator's never_finish fault), each on its own caller
 * connection, and the service's live V8 heap after full collections, idle
 * and at the plateau. The service runs alone in a child process so nothing
 * of this test (its clients, the emulator, the test runner) is counted.
 * The target (issue 6) is 20 KB per waiting job; bench/waiting.ts measures
 * the same at 10,000 jobs with RSS and heap snapshots.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import { createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { startEmulator } from '../../src/emulator/index.js';
import { RequestLocals } from '../../src/http/waiting-requests.js';
import { startTestService, TEST_KEY } from '../helpers/service.js';
import { tsEntry } from '../helpers/entry.js';

const JOBS = 1_000;
/** Bytes of live heap per waiting job, the target. */
const LIMIT_BYTES = 20_000;
const KEY = 'sk-test-0123456789abcdef';
const FIXTURE = tsEntry(new URL('../fixtures/waiting-service.ts', import.meta.url));

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function ask<T>(child: ChildProcess, msg: object, key: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: Record<string, unknown>) => {
      if (key in m) {
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m[key] as T);
      }
    };
    const onExit = (code: number | null) => reject(new Error(`service exited (${code}) before answering ${key}`));
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.send(msg);
  });
}

function post(url: string, agent: http.Agent, prompt: string): { done: Promise<number>; req: http.ClientRequest } {
  const body = JSON.stringify({ model: 'alibaba/z-image-turbo', prompt, size: '512x512' });
  const req = http.request(url, { method: 'POST', agent, headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' } });
  const done = new Promise<number>((resolve) => {
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(-1));
    });
    req.on('error', () => resolve(-1));
  });
  req.end(body);
  return { done, req };
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function measure(mode: 'polling' | 'webhook'): Promise<{ idle: number; plateau: number; perJob: number }> {
  const emulator = await startEmulator({ port: 0, latencyMs: 20, imageMode: 'cheap', concurrency: 100_000 });
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-waiting-'));
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
    // 1,000 requests arriving at once on a loaded machine can hold the event loop past the default
    // 10 s ledger lease, and a lapsed lease refuses requests (503 lease_expired, tested elsewhere).
    LEASE_EXPIRY_MS: '600000',
    // Polling mode: every job waits by polling (no status streams, which hold a connection each).
    ...(mode === 'polling' ? { STATUS_STREAMS_MAX: '0' } : { FAL_WEBHOOKS: 'true', PUBLIC_BASE_URL: `http://127.0.0.1:${port}`, FAL_WEBHOOK_GRACE_MS: '600000' }),
  };
  const child = fork(FIXTURE.file, { env, execArgv: ['--expose-gc', ...FIXTURE.execArgv], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const requests: Array<ReturnType<typeof post>> = [];
  try {
    const url = `${await ask<string>(child, {}, 'url')}/v1/images/generations`;
    // Warm-up: pools, caches and compiled code exist before the idle figure.
    for (let i = 0; i < 3; i++) {
      const statuses = await Promise.all(Array.from({ length: 10 }, (_, k) => post(url, agent, `warm ${i} ${k}`).done));
      assert.deepEqual(statuses, Array(10).fill(200));
    }
    const idle = await ask<number>(child, { measure: true }, 'heapUsed');
    // WAITING_SNAPSHOTS=DIR keeps heap snapshots of both moments, for bench/probes/heap-diff.ts.
    const snapshots = process.env.WAITING_SNAPSHOTS;
    if (snapshots) await ask(child, { snapshot: join(snapshots, `${mode}-idle.heapsnapshot`) }, 'snapshot');
    emulator.armFault({ kind: 'never_finish', times: JOBS });
    const answered: number[] = [];
    for (let i = 0; i < JOBS; i++) {
      const held = post(url, agent, `waiting ${i}`);
      requests.push(held);
      void held.done.then((status) => answered.push(status));
    }
    await until(`${JOBS} jobs at fal`, () => {
      // A held request is never answered; an answer means it never reached fal, and waiting on would only time out.
      if (answered.length > 0) throw new Error(`${answered.length} held requests were answered (${[...new Set(answered)].join(', ')}) instead of waiting at fal; the service's log above says why`);
      return emulator.jobs().filter((j) => j.status !== 'COMPLETED').length >= JOBS;
    });
    // Every job has been polled (or, with webhooks, waits on its callback) at least once.
    if (mode === 'polling') {
      const first = emulator.stats().status ?? 0;
      await until('a round of status polls', () => (emulator.stats().status ?? 0) >= first + JOBS);
    }
    const plateau = await ask<number>(child, { measure: true }, 'heapUsed');
    if (snapshots) await ask(child, { snapshot: join(snapshots, `${mode}-plateau.heapsnapshot`) }, 'snapshot');
    return { idle, plateau, perJob: (plateau - idle) / JOBS };
  } finally {
    child.kill('SIGKILL');
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    for (const r of requests) r.req.destroy();
    agent.destroy();
    await emulator.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

describe('a waiting request costs at most 20 KB of live heap (1,000 held at fal)', () => {
  for (const mode of ['polling', 'webhook'] as const) {
    it(`${mode} mode`, { timeout: 300_000 }, async (t) => {
      const m = await measure(mode);
      t.diagnostic(`${mode}: idle ${(m.idle / 1048576).toFixed(1)} MiB, plateau ${(m.plateau / 1048576).toFixed(1)} MiB, ${Math.round(m.perJob)} B per waiting job`);
      assert.ok(m.perJob > 0, 'waiting jobs hold something: the measurement saw them');
      assert.ok(m.perJob <= LIMIT_BYTES, `${Math.round(m.perJob)} B of live heap per waiting job exceeds ${LIMIT_BYTES} B`);
    });
  }
});

/**
 * Each rule of src/http/waiting-requests.ts, seen on a real image request
 * while it waits at fal: a rule that stops applying fails here at once,
 * long before the 1,000-job figures above would show it.
 */
describe('the waiting-request rules apply to a waiting image request', () => {
  it('prototypes, security headers, locals, dispatch state and the one controller', async (t) => {
    const svc = await startTestService();
    t.after(() => svc.close());
    let seen: { req: IncomingMessage & Record<string, unknown>; res: ServerResponse & { locals?: unknown } } | undefined;
    svc.service.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/v1/images/generations') seen = { req: req as IncomingMessage & Record<string, unknown>, res };
    });
    const [fault] = svc.emulator.armFault({ kind: 'never_finish', prompt_contains: 'held' });
    const answer = fetch(`${svc.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'held at fal', size: '512x512' }),
    });
    await until('the job at fal', () => svc.emulator.jobs().some((j) => j.status !== 'COMPLETED'));
    const { req, res } = seen!;
    assert.equal(req.constructor.name, 'AppRequest', 'rule 1: requests are built from the app class, not re-prototyped');
    assert.equal(res.constructor.name, 'AppResponse', 'rule 1: responses too');
    assert.ok(!res.hasHeader('content-security-policy') && !res.hasHeader('x-content-type-options'), 'rule 2: no security headers held while waiting');
    assert.ok(res.locals instanceof RequestLocals, 'rule 3: locals are a RequestLocals');
    assert.equal(req['next'], undefined, 'rule 4: Express dispatch state dropped while waiting');
    assert.ok((res.locals as RequestLocals).caller instanceof AbortController, 'rule 5: one controller per request, on the locals');
    assert.ok(fault);

    const job = svc.emulator.jobs().find((j) => j.status !== 'COMPLETED')!;
    svc.emulator.finishJob(job.request_id);
    const done = await answer;
    assert.equal(done.status, 200);
    assert.equal(done.headers.get('x-content-type-options'), 'nosniff', 'rule 2: the headers are on the answer');
    assert.ok(done.headers.get('content-security-policy'));
    await done.arrayBuffer();
  });
});
