import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { createWebhookVerifier, createCompletionHub } from '../../src/fal/webhooks.js';

/**
 * Webhook mode: jobs are submitted with fal's webhook and finished by the
 * signed callback, with no status traffic. fal's callbacks reach the service
 * through a recording proxy here, so a test can replay, forge or delay them.
 */

interface Recorded {
  headers: IncomingHttpHeaders;
  body: Buffer;
  status: number;
}

function startRecordingProxy() {
  const recorded: Recorded[] = [];
  let target = '';
  let holdMs = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const forward = () => {
        const up = httpRequest(`${target}${req.url}`, { method: req.method, headers: req.headers }, (upRes) => {
          recorded.push({ headers: req.headers, body, status: upRes.statusCode ?? 0 });
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        });
        up.on('error', () => res.destroy());
        up.end(body);
      };
      if (holdMs > 0) setTimeout(forward, holdMs);
      else forward();
    });
  });
  return {
    recorded,
    setTarget: (t: string) => (target = t),
    hold: (ms: number) => (holdMs = ms),
    listen: () => new Promise<string>((r) => server.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))),
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

async function send(url: string, headers: IncomingHttpHeaders, body: Buffer): Promise<number> {
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (typeof v === 'string' && k !== 'host' && k !== 'content-length') h[k] = v;
  const res = await fetch(`${url}/v1/fal/webhook`, { method: 'POST', headers: h, body });
  await res.arrayBuffer();
  return res.status;
}

describe('fal webhooks', () => {
  let t: TestService;
  const proxy = startRecordingProxy();
  before(async () => {
    const proxyUrl = await proxy.listen();
    t = await startTestService({ FAL_WEBHOOKS: 'true', PUBLIC_BASE_URL: proxyUrl, FAL_WEBHOOK_GRACE_MS: '1500' }, { latencyMs: 150, webhookRetry: { baseDelayMs: 50 } });
    proxy.setTarget(t.url);
  });
  after(async () => {
    await t.close();
    await proxy.close();
  });

  const generate = (prompt: string) =>
    fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt, image_size: 'square' }),
    });

  it('finishes jobs by the verified callback, with zero status traffic', async () => {
    const before = t.emulator.stats();
    const results = await Promise.all(['hook a', 'hook b', 'hook c'].map(generate));
    for (const r of results) assert.equal(r.status, 200);
    const stats = t.emulator.stats();
    assert.equal((stats.status ?? 0) - (before.status ?? 0), 0, 'no status polls');
    assert.equal((stats.stream ?? 0) - (before.stream ?? 0), 0, 'no status streams');
    assert.ok(t.service.fal.stats.webhookWakeups >= 3);
    assert.ok(proxy.recorded.length >= 3);
    for (const rec of proxy.recorded) assert.equal(rec.status, 200);
    for (const r of results) {
      const b = (await r.json()) as { meta: { fal_request_id: string; usage: { cost_usd: string } } };
      const row = await t.service.ledger.getRequest(r.headers.get('x-request-id')!);
      assert.equal(row?.status, 'settled');
      assert.equal(row?.jobs[0]?.falRequestId, b.meta.fal_request_id);
      assert.ok(t.emulator.billing().some((e) => e.request_id === b.meta.fal_request_id));
    }
  });

  it('a replayed callback is a harmless no-op; a tampered one is refused', async () => {
    const rec = proxy.recorded[0]!;
    assert.equal(await send(t.url, rec.headers, rec.body), 200, 'same delivery again: accepted, changes nothing');
    const tampered = Buffer.from(rec.body.toString('utf8').replace('"OK"', '"ERROR"'));
    assert.equal(await send(t.url, rec.headers, tampered), 401);
    const reTimed = { ...rec.headers, 'x-fal-webhook-timestamp': String(Number(rec.headers['x-fal-webhook-timestamp']) + 1) };
    assert.equal(await send(t.url, reTimed, rec.body), 401, 'the timestamp is signed');
  });

  it('a forged callback (wrong key, missing headers) is refused and wakes nothing', async () => {
    const body = Buffer.from(JSON.stringify({ request_id: 'forged-1', status: 'OK', payload: {} }));
    const forged = {
      'content-type': 'application/json',
      'x-fal-webhook-request-id': 'forged-1',
      'x-fal-webhook-user-id': 'u',
      'x-fal-webhook-timestamp': String(Math.floor(Date.now() / 1000)),
      'x-fal-webhook-signature': 'ab'.repeat(64),
    };
    assert.equal(await send(t.url, forged, body), 401);
    assert.equal(await send(t.url, { 'content-type': 'application/json' }, body), 401);
  });

  it('a late callback: the job is finished by polling after the grace period, the callback then changes nothing', async () => {
    proxy.hold(4000);
    try {
      const started = Date.now();
      const res = await generate('late hook');
      assert.equal(res.status, 200);
      const took = Date.now() - started;
      assert.ok(took >= 1500 && took < 4000, `finished by polling after the grace period (${took} ms)`);
      const body = (await res.json()) as { meta: { usage: { cost_usd: string } } };
      assert.equal(body.meta.usage.cost_usd, '0.005000');
    } finally {
      proxy.hold(0);
    }
    // The held callback lands later and is answered 200 without effect.
    for (let i = 0; i < 100 && !proxy.recorded.some((r) => JSON.parse(r.body.toString()).payload?.prompt === 'late hook'); i++) await new Promise((r) => setTimeout(r, 50));
    const late = proxy.recorded.find((r) => JSON.parse(r.body.toString()).payload?.prompt === 'late hook');
    assert.equal(late?.status, 200);
  });

  it('refuses deliveries older than the tolerance (replays), with the clock as the only difference', async () => {
    const rec = proxy.recorded[0]!;
    const jwks = `${t.emulator.url}/rest.alpha.fal.ai/.well-known/jwks.json`;
    const header = (h: IncomingHttpHeaders) => (name: string) => h[name.toLowerCase()] as string | undefined;
    const fresh = createWebhookVerifier({ jwksUrl: jwks, fetchImpl: fetch });
    assert.equal((await fresh.verify(header(rec.headers), rec.body)).status, 'OK');
    const later = createWebhookVerifier({ jwksUrl: jwks, fetchImpl: fetch, now: () => Date.now() + 10 * 60_000 });
    await assert.rejects(later.verify(header(rec.headers), rec.body), /outside the accepted window/);
  });

  it('the hub wakes a waiter once, and remembers a callback that beat its waiter', async () => {
    const hub = createCompletionHub();
    assert.equal(hub.notify('early'), false);
    await hub.wait('early');
    const waiting = hub.wait('x');
    assert.equal(hub.waiting, 1);
    assert.equal(hub.notify('x'), true);
    await waiting;
    assert.equal(hub.waiting, 0);
  });

  it('the hub\'s grace period: a wait times out once, a woken or aborted wait never does, and a delay past the timer limit is no timeout', async () => {
    const hub = createCompletionHub();
    assert.equal(await hub.wait('slow', undefined, 5), 'timeout');
    assert.equal(hub.waiting, 0, 'a timed-out waiter is unlisted');

    const woken = hub.wait('woken', undefined, 30);
    hub.notify('woken');
    assert.equal(await woken, 'notified');

    const abort = new AbortController();
    const aborted = hub.wait('aborted', abort.signal, 30);
    abort.abort();
    assert.equal(await aborted, 'aborted');

    const forever = hub.wait('forever', undefined, 2 ** 31);
    const outcome = await Promise.race([forever, new Promise((r) => setTimeout(() => r('still waiting'), 50))]);
    assert.equal(outcome, 'still waiting');
    hub.notify('forever');
    assert.equal(await forever, 'notified');
    // The woken and aborted waits' timers were cleared: nothing fires for them later.
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(hub.waiting, 0);
  });
});
