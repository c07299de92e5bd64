import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import {
  describeWithRedis,
  describeWithRedisServer,
  deleteRedisKeys,
  REDIS_URL,
  startOwnRedis,
  startRedisProxy,
  testRedisClient,
  uniqueRedisPrefix,
  type OwnRedis,
  type RedisProxy,
} from '../helpers/redis.js';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { formatResetDuration } from '../../src/http/rate-limit.js';

const MODEL = 'alibaba/z-image-turbo';
/** OpenAI's (Go's) duration format, as `x-ratelimit-reset-requests` carries it. */
const GO_DURATION = /^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$/;

function generate(url: string, key: string, prompt: string): request.Test {
  return request(url)
    .post('/v1/images/generations')
    .set('Authorization', `Bearer ${key}`)
    .send({ model: MODEL, prompt, image_size: 'square' });
}

describe('reset duration format', () => {
  it('matches what OpenAI sends', () => {
    assert.equal(formatResetDuration(0), '0s');
    assert.equal(formatResetDuration(-5), '0s');
    assert.equal(formatResetDuration(120), '120ms');
    assert.equal(formatResetDuration(0.2), '1ms');
    assert.equal(formatResetDuration(1_000), '1s');
    assert.equal(formatResetDuration(1_500), '1.5s');
    assert.equal(formatResetDuration(59_999), '59.999s');
    assert.equal(formatResetDuration(60_000), '1m0s');
    assert.equal(formatResetDuration(360_000), '6m0s');
    assert.equal(formatResetDuration(90_250), '1m30.25s');
    assert.equal(formatResetDuration(3_600_000), '1h0m0s');
    for (const ms of [1, 999, 1_000, 12_345, 60_000, 3_723_004]) assert.match(formatResetDuration(ms), GO_DURATION);
  });
});

describe('per-key rate limits, in process', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ DEFAULT_RPM_LIMIT: '600' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  it("refuses a key's 4th request in a minute at rpm_limit 3, with OpenAI's headers; other keys go on", async () => {
    assert.equal(t.service.rateLimiter.store, 'memory');
    const refusedBefore = t.service.rateLimiter.stats.refused;
    const { key } = await t.service.keys.create({ name: 'three a minute', rpmLimit: 3 });
    for (const remaining of [2, 1, 0]) {
      const res = await generate(t.url, key, `rl-three ${remaining}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.headers['x-ratelimit-limit-requests'], '3');
      assert.equal(res.headers['x-ratelimit-remaining-requests'], String(remaining));
      assert.match(res.headers['x-ratelimit-reset-requests'] ?? '', GO_DURATION);
    }

    const refused = await generate(t.url, key, 'rl-three refused');
    assert.equal(refused.status, 429);
    assert.deepEqual(refused.body.error.type, 'rate_limit_error');
    assert.equal(refused.body.error.code, 'rate_limit_exceeded');
    assert.equal(refused.body.error.param, null);
    assert.match(refused.body.error.message, /3 requests per minute/);
    const retryAfter = Number(refused.headers['retry-after']);
    const retryAfterMs = Number(refused.headers['retry-after-ms']);
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
    assert.ok(retryAfterMs > 0 && retryAfterMs <= 60_000 && Math.ceil(retryAfterMs / 1000) === retryAfter, `retry-after-ms ${retryAfterMs}`);
    assert.equal(refused.headers['x-ratelimit-limit-requests'], '3');
    assert.equal(refused.headers['x-ratelimit-remaining-requests'], '0');
    assert.match(refused.headers['x-ratelimit-reset-requests'] ?? '', GO_DURATION);
    assert.equal(t.service.rateLimiter.stats.refused, refusedBefore + 1);
    assert.match(await t.service.metrics.registry.metrics(), /gateway_refusals_total\{reason="rate_limit"\} 1\b/);

    // Another key (static, so the default limit) is counted on its own.
    const other = await generate(t.url, TEST_KEY, 'rl-three other key');
    assert.equal(other.status, 200);
    assert.equal(other.headers['x-ratelimit-limit-requests'], '600');
    assert.equal(other.headers['x-ratelimit-remaining-requests'], '599');

    // The refused request never reached fal.
    assert.equal(t.emulator.jobs().filter((j) => String(j.input.prompt).startsWith('rl-three')).length, 4);
  });

  it('limits only the image route, not health, usage or admin', async () => {
    const { key } = await t.service.keys.create({ name: 'one a minute', role: 'admin', rpmLimit: 1 });
    assert.equal((await generate(t.url, key, 'rl-one 1')).status, 200);
    assert.equal((await generate(t.url, key, 'rl-one 2')).status, 429);
    for (let i = 0; i < 3; i++) {
      const health = await request(t.url).get('/healthz');
      assert.notEqual(health.status, 429);
      assert.equal(health.headers['x-ratelimit-limit-requests'], undefined);
      for (const path of ['/v1/usage', '/v1/admin/keys']) {
        const res = await request(t.url).get(path).set('Authorization', `Bearer ${key}`);
        assert.equal(res.status, 200, `${path}: ${JSON.stringify(res.body)}`);
        assert.equal(res.headers['x-ratelimit-limit-requests'], undefined);
      }
    }
  });

  it('counts requests that later fail validation, and they still carry the headers', async () => {
    const { key } = await t.service.keys.create({ name: 'two a minute', rpmLimit: 2 });
    const bad = await request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${key}`)
      .send({ model: 'no/such-model', prompt: 'x' });
    assert.equal(bad.status, 404);
    assert.equal(bad.headers['x-ratelimit-remaining-requests'], '1');
    assert.equal((await generate(t.url, key, 'rl-two')).status, 200);
    assert.equal((await generate(t.url, key, 'rl-two')).status, 429);
  });
});

describe('per-key rate limits, DEFAULT_RPM_LIMIT=0', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ DEFAULT_RPM_LIMIT: '0' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  it('leaves keys without their own limit unlimited, while a key rpm_limit still applies', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await generate(t.url, TEST_KEY, `rl-unlimited ${i}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers['x-ratelimit-limit-requests'], undefined);
    }
    const { key } = await t.service.keys.create({ name: 'limited', rpmLimit: 1 });
    assert.equal((await generate(t.url, key, 'rl-own')).status, 200);
    assert.equal((await generate(t.url, key, 'rl-own')).status, 429);
  });
});

describe('per-key rate limits, Redis down', () => {
  let t: TestService;
  let startedInMs = 0;
  before(async () => {
    const t0 = Date.now();
    // Nothing listens on port 1.
    t = await startTestService({ REDIS_URL: 'redis://127.0.0.1:1', DEFAULT_RPM_LIMIT: '2' }, { imageMode: 'cheap' });
    startedInMs = Date.now() - t0;
  });
  after(async () => {
    await t.close();
  });

  it('starts without waiting on Redis, lets requests through, warns once, counts each fail-open and reports itself degraded', async () => {
    assert.ok(startedInMs < 5_000, `start-up took ${startedInMs} ms`);
    assert.equal(t.service.rateLimiter.store, 'redis');
    const before = t.service.rateLimiter.stats.failOpen;
    // Over the limit of 2: with Redis down the limit is not enforced.
    for (let i = 0; i < 4; i++) {
      const res = await generate(t.url, TEST_KEY, `rl-down ${i}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.headers['x-ratelimit-limit-requests'], undefined);
    }
    assert.equal(t.service.rateLimiter.stats.failOpen, before + 4);
    assert.equal(t.service.rateLimiter.stats.refused, 0);
    assert.match(await t.service.metrics.registry.metrics(), /gateway_rate_limit_fail_open_total 4\b/);
    assert.deepEqual(outageLines(t), { warnings: 1, recoveries: 0 }, 'one warning for the outage, not one per request or reconnect');
    const ready = await readyz(t.url);
    assert.equal(ready.status, 200);
    assert.equal(ready.body.status, 'degraded');
    assert.deepEqual(ready.body.degraded, ['rate_limiter']);
    // The Redis URL may hold a password: it is never logged.
    assert.ok(!JSON.stringify(t.logs).includes('redis://'));
  });
});

describeWithRedisServer('per-key rate limits, Redis failing while the service runs', () => {
  let redis: OwnRedis;
  let t: TestService;
  before(async () => {
    redis = await startOwnRedis();
    t = await startTestService({ REDIS_URL: redis.url, DEFAULT_RPM_LIMIT: '100' }, { imageMode: 'cheap' });
  });
  after(async () => {
    if (redis.process.signalCode === 'SIGSTOP') redis.process.kill('SIGCONT');
    await t?.close();
    await redis.kill();
  });

  const timed = async (key: string, prompt: string): Promise<{ res: request.Response; ms: number }> => {
    const t0 = Date.now();
    const res = await generate(t.url, key, prompt);
    return { res, ms: Date.now() - t0 };
  };

  it('fails open within the command timeout when Redis hangs or dies, and enforces again once it answers', async () => {
    const { key } = await t.service.keys.create({ name: 'two a minute', rpmLimit: 2 });
    const first = await generate(t.url, key, 'rl-fault 1');
    assert.equal(first.status, 200);
    assert.equal(first.headers['x-ratelimit-remaining-requests'], '1');

    // A frozen Redis accepts the command and never answers: only our command
    // timeout (500 ms) stands between it and a hung request.
    redis.process.kill('SIGSTOP');
    const frozen = await timed(key, 'rl-fault 2');
    assert.equal(frozen.res.status, 200);
    assert.equal(frozen.res.headers['x-ratelimit-limit-requests'], undefined);
    assert.ok(frozen.ms < 5_000, `took ${frozen.ms} ms`);
    assert.equal(t.service.rateLimiter.stats.failOpen, 1);

    // Redis runs the command it held once thawed, so the key has used its 2.
    redis.process.kill('SIGCONT');
    const thawed = await generate(t.url, key, 'rl-fault 3');
    assert.equal(thawed.status, 429);
    assert.equal(thawed.body.error.code, 'rate_limit_exceeded');

    // A dead Redis: nothing is queued for it, the request does not wait.
    await redis.kill();
    const other = await t.service.keys.create({ name: 'after the crash', rpmLimit: 1 });
    for (let i = 0; i < 3; i++) {
      const dead = await timed(other.key, `rl-fault dead ${i}`);
      assert.equal(dead.res.status, 200);
      assert.ok(dead.ms < 5_000, `took ${dead.ms} ms`);
    }
    assert.equal(t.service.rateLimiter.stats.failOpen, 4);
    // Two outages (frozen, then dead), each one warning; the first one's end said so.
    assert.deepEqual(outageLines(t), { warnings: 2, recoveries: 1 });
  });
});

/** The limiter's outage log lines: one warning when it starts, one info when it ends. */
function outageLines(t: TestService): { warnings: number; recoveries: number } {
  const mine = t.logs.filter((l) => /rate.limit/i.test(String(l.msg)));
  return { warnings: mine.filter((l) => l.level === 40).length, recoveries: mine.filter((l) => l.level === 30 && /again/.test(String(l.msg))).length };
}

async function readyz(url: string): Promise<{ status: number; body: { status: string; checks: Record<string, boolean>; degraded?: string[] } }> {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; checks: Record<string, boolean>; degraded?: string[] } };
}

/** Polls /readyz until `accept` holds; generous deadline, the client reconnects with back-off. */
async function readyzUntil(url: string, accept: (r: Awaited<ReturnType<typeof readyz>>) => boolean): Promise<Awaited<ReturnType<typeof readyz>>> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await readyz(url);
    if (accept(r)) return r;
    if (Date.now() > deadline) throw new Error(`/readyz never reached the expected state; last: ${r.status} ${JSON.stringify(r.body)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

await describeWithRedis('per-key rate limits, Redis lost and back (fail open, the default)', () => {
  const prefix = uniqueRedisPrefix('rl-outage');
  let proxy: RedisProxy;
  let t: TestService;
  before(async () => {
    proxy = await startRedisProxy();
    t = await startTestService({ REDIS_URL: proxy.url, REDIS_KEY_PREFIX: prefix, DEFAULT_RPM_LIMIT: '2' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t?.close();
    await proxy?.close();
    await deleteRedisKeys(prefix);
  });

  it('reports the limiter degraded on /readyz (still 200), counts fail-opens in /metrics, warns once per outage and says when it is back', async () => {
    const healthy = await readyz(t.url);
    assert.equal(healthy.status, 200, JSON.stringify(healthy.body));
    assert.equal(healthy.body.status, 'ready');
    assert.equal(healthy.body.checks.rate_limiter, true);

    proxy.cut();
    const { key } = await t.service.keys.create({ name: 'one a minute', rpmLimit: 1 });
    for (let i = 0; i < 4; i++) {
      const res = await generate(t.url, key, `rl-outage ${i}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.headers['x-ratelimit-limit-requests'], undefined, 'no limit is reported while none is counted');
    }
    const degraded = await readyz(t.url);
    assert.equal(degraded.status, 200, 'failing open, the process still serves: a balancer must keep it');
    assert.equal(degraded.body.status, 'degraded');
    assert.equal(degraded.body.checks.rate_limiter, false);
    assert.deepEqual(degraded.body.degraded, ['rate_limiter']);
    assert.equal(degraded.body.checks.storage, true);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    assert.match(metrics, /^gateway_rate_limit_fail_open_total 4$/m);
    assert.match(metrics, /^gateway_rate_limit_store_up 0$/m);
    assert.deepEqual(outageLines(t), { warnings: 1, recoveries: 0 }, 'one warning for the whole outage, however many requests');

    proxy.restore();
    const back = await readyzUntil(t.url, (r) => r.body.status === 'ready');
    assert.equal(back.status, 200);
    assert.equal(back.body.checks.rate_limiter, true);
    assert.deepEqual(outageLines(t), { warnings: 1, recoveries: 1 });
    assert.match(await (await fetch(`${t.url}/metrics`)).text(), /^gateway_rate_limit_store_up 1$/m);
    // Enforced again: the key's one request of the minute, then 429.
    const other = await t.service.keys.create({ name: 'after the outage', rpmLimit: 1 });
    assert.equal((await generate(t.url, other.key, 'rl-outage back 1')).status, 200);
    assert.equal((await generate(t.url, other.key, 'rl-outage back 2')).status, 429);

    // A second outage is a second warning.
    proxy.cut();
    assert.equal((await generate(t.url, other.key, 'rl-outage again')).status, 200);
    assert.equal((await readyz(t.url)).body.status, 'degraded');
    assert.deepEqual(outageLines(t), { warnings: 2, recoveries: 1 });
    assert.ok(!JSON.stringify(t.logs).includes('redis://'), 'the Redis URL may hold a password: never logged');
  });
});

await describeWithRedis('per-key rate limits, Redis lost, RATE_LIMIT_FAIL_CLOSED=true', () => {
  const prefix = uniqueRedisPrefix('rl-closed');
  let proxy: RedisProxy;
  let t: TestService;
  before(async () => {
    proxy = await startRedisProxy();
    t = await startTestService({ REDIS_URL: proxy.url, REDIS_KEY_PREFIX: prefix, DEFAULT_RPM_LIMIT: '100', RATE_LIMIT_FAIL_CLOSED: 'true' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t?.close();
    await proxy?.close();
    await deleteRedisKeys(prefix);
  });

  it('answers 503 rate_limiter_unavailable with retry-after, sends nothing to fal, and /readyz is 503 until Redis is back', async () => {
    assert.equal((await generate(t.url, TEST_KEY, 'rl-closed before')).status, 200);
    proxy.cut();
    const jobsBefore = t.emulator.jobs().length;
    for (let i = 0; i < 2; i++) {
      const res = await generate(t.url, TEST_KEY, `rl-closed ${i}`);
      assert.equal(res.status, 503, JSON.stringify(res.body));
      assert.equal(res.body.error.code, 'rate_limiter_unavailable');
      assert.equal(res.body.error.type, 'service_unavailable');
      assert.ok(Number(res.headers['retry-after']) >= 1, `retry-after ${res.headers['retry-after']}`);
    }
    assert.equal(t.emulator.jobs().length, jobsBefore, 'refused before fal');
    const notReady = await readyz(t.url);
    assert.equal(notReady.status, 503, 'unable to serve image requests: out of the balancer');
    assert.equal(notReady.body.status, 'not_ready');
    assert.equal(notReady.body.checks.rate_limiter, false);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    assert.match(metrics, /^gateway_refusals_total\{reason="rate_limiter_unavailable"\} 2$/m);
    assert.match(metrics, /^gateway_rate_limit_fail_open_total 0$/m);
    assert.deepEqual(outageLines(t), { warnings: 1, recoveries: 0 });

    proxy.restore();
    await readyzUntil(t.url, (r) => r.status === 200 && r.body.status === 'ready');
    assert.equal((await generate(t.url, TEST_KEY, 'rl-closed after')).status, 200);
    assert.deepEqual(outageLines(t), { warnings: 1, recoveries: 1 });
  });
});

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Child {
  process: ChildProcess;
  url: string;
  output: () => string;
}

/** `node --import tsx src/main.ts` with `env`; resolves with the URL from its banner. */
function startServiceProcess(env: Record<string, string>): Promise<Child> {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env };
  // The test runner's marker would make a child think it is a test file.
  delete childEnv.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`service process did not start in time:\n${out}`));
    }, 30_000);
    const onData = (): void => {
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
      resolve({ process: child, url: m[1]!, output: () => out });
    };
    const onExit = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`service process exited (${code}) before listening:\n${out}`));
    };
    child.stdout.on('data', onData);
    child.once('exit', onExit);
  });
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

await describeWithRedis('per-key rate limits, two processes sharing Redis', () => {
  const prefix = uniqueRedisPrefix('rate-limit');
  const apiKey = `sk-rl-${randomBytes(12).toString('hex')}`;
  const children: Child[] = [];
  let emulator: Emulator | undefined;
  let dataDir: string | undefined;

  before(async () => {
    emulator = await startEmulator({ port: 0, latencyMs: 20, imageMode: 'cheap' });
    dataDir = await mkdtemp(join(tmpdir(), 'gw-rl-test-'));
    const env = {
      PORT: '0',
      HOST: '127.0.0.1',
      API_KEYS: apiKey,
      ADMIN_API_KEY: '',
      FAL_BASE_URL: emulator.url,
      FAL_KEY: 'fal-test-key',
      DATA_DIR: dataDir,
      DATABASE_URL: '',
      BILLING_WEBHOOK_URL: '',
      REDIS_URL,
      REDIS_KEY_PREFIX: prefix,
      DEFAULT_RPM_LIMIT: '5',
      LOG_LEVEL: 'warn',
      // Stopped with SIGTERM at the end: no balancer to wait for.
      SHUTDOWN_MIN_DRAIN_MS: '0',
    };
    // One after the other: both run the same migrations on one SQLite file.
    children.push(await startServiceProcess(env));
    children.push(await startServiceProcess(env));
  });

  after(async () => {
    await Promise.all(children.map((c) => stopProcess(c.process)));
    await emulator?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    await deleteRedisKeys(prefix);
  });

  it('holds one limit across both processes', async () => {
    const [a, b] = children;
    assert.ok(a && b && a.url !== b.url);
    const results: Array<{ via: string; status: number; remaining: string | undefined; retryAfter: string | undefined; code?: string }> = [];
    for (let i = 0; i < 10; i++) {
      const via = i % 2 === 0 ? a : b;
      const res = await generate(via.url, apiKey, `rl-shared ${i}`);
      results.push({
        via: via === a ? 'a' : 'b',
        status: res.status,
        remaining: res.headers['x-ratelimit-remaining-requests'],
        retryAfter: res.headers['retry-after'],
        code: res.body?.error?.code,
      });
    }
    const detail = JSON.stringify(results);
    const ok = results.filter((r) => r.status === 200);
    assert.equal(ok.length, 5, detail);
    assert.deepEqual(ok.map((r) => r.remaining), ['4', '3', '2', '1', '0'], detail);
    assert.deepEqual(new Set(ok.map((r) => r.via)), new Set(['a', 'b']), detail);
    const refused = results.slice(5);
    for (const r of refused) {
      assert.equal(r.status, 429, detail);
      assert.equal(r.code, 'rate_limit_exceeded', detail);
      assert.equal(r.remaining, '0', detail);
      assert.ok(Number(r.retryAfter) >= 1, detail);
    }
    assert.deepEqual(new Set(refused.map((r) => r.via)), new Set(['a', 'b']), detail);
    assert.equal(emulator!.jobs().filter((j) => String(j.input.prompt).startsWith('rl-shared')).length, 5);

    // The count lives in Redis, under this run's prefix.
    const client = testRedisClient();
    await client.connect();
    try {
      const keys = await client.keys(`${prefix}*`);
      assert.equal(keys.length, 1, keys.join(','));
      assert.equal(await client.get(keys[0]!), '10');
    } finally {
      client.disconnect();
    }
  });
});
