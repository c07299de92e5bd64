import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, it } from 'node:test';
import pino from 'pino';
import { createCompletionRelay, type CompletionRelay } from '../../src/fal/completion-relay.js';
import { createCompletionHub } from '../../src/fal/webhooks.js';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { describeWithRedis, REDIS_URL, uniqueRedisPrefix } from '../helpers/redis.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

const quiet = pino({ level: 'silent' });

/** Resolves once `cond` holds, polling; rejects after `ms`. */
async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

await describeWithRedis('completion relay between replicas (Redis pub/sub)', () => {
  const channel = `${uniqueRedisPrefix('relay')}:fal-completions`;
  const hubA = createCompletionHub();
  const hubB = createCompletionHub();
  let a: CompletionRelay;
  let b: CompletionRelay;
  before(async () => {
    a = createCompletionRelay({ hub: hubA, redisUrl: REDIS_URL, channel, logger: quiet });
    b = createCompletionRelay({ hub: hubB, redisUrl: REDIS_URL, channel, logger: quiet });
    await Promise.all([a.ready(), b.ready()]);
  });
  after(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  it('a callback received by one replica wakes the waiter on another', async () => {
    const waiting = a.wait('job-1', undefined, 10_000);
    assert.equal(b.notify('job-1'), false, 'nobody waits on b');
    assert.equal(await waiting, 'notified');
    await until(() => a.stats.woke === 1);
    assert.equal(b.stats.published, 1);
  });

  it('a local waiter is woken without publishing, and a replica ignores its own messages', async () => {
    const published = a.stats.published;
    const waiting = a.wait('job-2', undefined, 10_000);
    assert.equal(a.notify('job-2'), true);
    assert.equal(await waiting, 'notified');
    assert.equal(a.stats.published, published);
    const receivedByA = a.stats.received;
    a.notify('job-nobody');
    await until(() => b.stats.received > 0 && hubB.waiting === 0);
    // b remembered it as an early callback: a wait that follows returns at once.
    assert.equal(await b.wait('job-nobody', undefined, 1), 'notified');
    assert.equal(a.stats.received, receivedByA, 'a never hears itself');
  });

  it('a callback that beats its waiter on the other replica is remembered there', async () => {
    b.notify('job-early');
    await until(() => a.stats.received >= 2);
    assert.equal(await a.wait('job-early', undefined, 1), 'notified');
  });
});

await describeWithRedis('webhook mode with two replicas: the callback reaches the other one', () => {
  const prefix = uniqueRedisPrefix('relay-e2e');
  let emulator: Emulator;
  let waiterSide: TestService;
  let callbackSide: TestService;
  let proxy: Server;
  let target = '';
  before(async () => {
    emulator = await startEmulator({ port: 0, latencyMs: 150, imageMode: 'cheap' });
    // fal's callbacks for jobs submitted by `waiterSide` go, through this
    // stand-in for a balancer, to `callbackSide`.
    proxy = createServer((req, res) => {
      const up = httpRequest(`${target}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    // A grace period far beyond the test: a job finished here was finished by the relayed callback, not by polling.
    const env = { FAL_WEBHOOKS: 'true', FAL_WEBHOOK_GRACE_MS: '60000', REDIS_URL, REDIS_KEY_PREFIX: prefix };
    callbackSide = await startTestService({ ...env, PUBLIC_BASE_URL: proxyUrl }, { use: emulator });
    target = callbackSide.url;
    waiterSide = await startTestService({ ...env, PUBLIC_BASE_URL: proxyUrl }, { use: emulator });
  });
  after(async () => {
    await waiterSide?.close();
    await callbackSide?.close();
    proxy.closeAllConnections();
    await new Promise<void>((r) => proxy.close(() => r()));
    await emulator?.close();
  });

  it('finishes the jobs through the relay, with no status traffic and every job billed once', async () => {
    const before = emulator.stats();
    const answers = await Promise.all(
      ['relay a', 'relay b', 'relay c'].map((prompt) =>
        fetch(`${waiterSide.url}/v1/images/generations`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt }),
          signal: AbortSignal.timeout(30_000),
        }),
      ),
    );
    for (const r of answers) assert.equal(r.status, 200, await r.clone().text());
    const stats = emulator.stats();
    assert.equal((stats.status ?? 0) - (before.status ?? 0), 0, 'no status polls');
    assert.equal((stats.stream ?? 0) - (before.stream ?? 0), 0, 'no status streams');
    for (const r of answers) {
      const body = (await r.json()) as { meta: { fal_request_id: string } };
      const row = await waiterSide.service.ledger.getRequest(r.headers.get('x-request-id')!);
      assert.equal(row?.status, 'settled');
      assert.equal(emulator.billing().filter((e) => e.request_id === body.meta.fal_request_id).length, 1);
    }
  });
});
