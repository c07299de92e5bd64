import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import pino from 'pino';
import {
  backoffDelayMs,
  createBillingWebhookWorker,
  signStandardWebhook,
  verifyStandardWebhook,
  webhookBody,
  webhookSigningKey,
} from '../../src/metering/billing-webhook.js';
import { createOutboxStore, type OutboxStore } from '../../src/metering/outbox-store.js';
import { billingEventId, settleCompleted } from '../../src/metering/settlement.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { parseMarkup } from '../../src/metering/money.js';
import { createModelRegistry, defaultModels } from '../../src/models/registry.js';
import { describeEachDialect } from '../helpers/databases.js';

/** The Standard Webhooks reference libraries' own test vector (libraries/javascript/src/webhook.test.ts, "sign function works"). */
const REFERENCE = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};

/** The spec, written out with node:crypto alone: HMAC-SHA256 over "<id>.<timestamp>.<body>", base64, prefixed "v1,". */
function specSignature(key: Buffer, id: string, timestamp: number, body: string): string {
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

describe('Standard Webhooks signing', () => {
  it('matches the reference test vector', () => {
    assert.equal(signStandardWebhook(REFERENCE.secret, REFERENCE.id, REFERENCE.timestamp, REFERENCE.body), REFERENCE.signature);
    const key = Buffer.from(REFERENCE.secret.slice('whsec_'.length), 'base64');
    assert.equal(specSignature(key, REFERENCE.id, REFERENCE.timestamp, REFERENCE.body), REFERENCE.signature);
  });

  it('uses the UTF-8 bytes of a secret without the whsec_ prefix', () => {
    const secret = 'plain sécret, not base64!';
    const body = '{"id":"evt_x","data":{"charge_usd":"0.005000"}}';
    const expected = specSignature(Buffer.from(secret, 'utf8'), 'evt_x', 1_700_000_000, body);
    assert.equal(signStandardWebhook(secret, 'evt_x', 1_700_000_000, body), expected);
    assert.deepEqual(webhookSigningKey(secret), Buffer.from(secret, 'utf8'));
  });

  it('refuses a whsec_ secret whose base64 is malformed instead of signing with another key', () => {
    for (const bad of ['whsec_', 'whsec_abc', 'whsec_ab!d', 'whsec_a===']) assert.throws(() => webhookSigningKey(bad), /base64/, bad);
    assert.throws(() => webhookSigningKey(''), /empty/);
  });

  it('verifies as a receiver would: one matching v1 signature, recent timestamp, exact body', () => {
    const now = () => REFERENCE.timestamp * 1000 + 10_000;
    const headers = { 'webhook-id': REFERENCE.id, 'webhook-timestamp': String(REFERENCE.timestamp), 'webhook-signature': REFERENCE.signature };
    assert.equal(verifyStandardWebhook(REFERENCE.secret, headers, REFERENCE.body, { now }), true);
    assert.equal(verifyStandardWebhook(REFERENCE.secret, new Headers(headers), Buffer.from(REFERENCE.body), { now }), true);
    const rotated = { ...headers, 'webhook-signature': `v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,xyz ${REFERENCE.signature}` };
    assert.equal(verifyStandardWebhook(REFERENCE.secret, rotated, REFERENCE.body, { now }), true);

    assert.equal(verifyStandardWebhook(REFERENCE.secret, headers, '{"test": 2432232315}', { now }), false, 'tampered body');
    assert.equal(verifyStandardWebhook('whsec_' + Buffer.from('another key').toString('base64'), headers, REFERENCE.body, { now }), false, 'wrong secret');
    assert.equal(verifyStandardWebhook(REFERENCE.secret, headers, REFERENCE.body, { now: () => REFERENCE.timestamp * 1000 + 301_000 }), false, 'stale');
    assert.equal(verifyStandardWebhook(REFERENCE.secret, { ...headers, 'webhook-id': 'msg_other' }, REFERENCE.body, { now }), false, 'other id');
    assert.equal(verifyStandardWebhook(REFERENCE.secret, { ...headers, 'webhook-signature': 'v1,' }, REFERENCE.body, { now }), false, 'empty');
    assert.equal(verifyStandardWebhook(REFERENCE.secret, { ...headers, 'webhook-timestamp': 'soon' }, REFERENCE.body, { now }), false, 'bad ts');
    for (const missing of ['webhook-id', 'webhook-timestamp', 'webhook-signature'] as const) {
      const h: Record<string, string> = { ...headers };
      delete h[missing];
      assert.equal(verifyStandardWebhook(REFERENCE.secret, h, REFERENCE.body, { now }), false, missing);
    }
  });

  it('gives every request a stable event id without dots (the signed string is split on them)', () => {
    assert.equal(billingEventId('req_0123abcd'), 'evt_req_0123abcd');
    assert.equal(billingEventId('trace.1.2'), 'evt_trace~1~2');
    assert.notEqual(billingEventId('a.b'), billingEventId('a_b'));
  });
});

describe('backoff', () => {
  it('doubles from the base, stops at the cap, and jitters within the upper half', () => {
    const at = (n: number, r: number) => backoffDelayMs(n, { baseMs: 1000, maxMs: 10_000, random: () => r });
    assert.deepEqual([1, 2, 3, 4, 5, 6, 50].map((n) => at(n, 1)), [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    assert.deepEqual([1, 2, 5].map((n) => at(n, 0)), [500, 1000, 5000]);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelayMs(3, { baseMs: 100, maxMs: 1000 });
      assert.ok(d >= 200 && d <= 400, String(d));
    }
  });
});

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
}

/** A fetch that records each call, answers with `answer`, and tracks how many calls per key overlap. */
function fakeFetch(answer: (body: Record<string, any>, n: number) => Promise<Response> | Response) {
  const calls: Array<{ url: string; init: RequestInit; body: Record<string, any> }> = [];
  const inFlight = new Map<string, number>();
  let maxPerKey = 0;
  const impl = (async (url: string | URL | Request, init?: RequestInit) => {
    const body = JSON.parse(String(init?.body)) as Record<string, any>;
    calls.push({ url: String(url), init: init ?? {}, body });
    const key = String(body.data?.key);
    inFlight.set(key, (inFlight.get(key) ?? 0) + 1);
    maxPerKey = Math.max(maxPerKey, inFlight.get(key)!);
    try {
      return await answer(body, calls.length);
    } finally {
      inFlight.set(key, inFlight.get(key)! - 1);
    }
  }) as typeof fetch;
  return { impl, calls, maxPerKey: () => maxPerKey };
}

function captureLogger() {
  const lines: string[] = [];
  return { logger: pino({ level: 'debug' }, { write: (l: string) => void lines.push(l) }), lines };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeEachDialect('billing webhook worker', ({ fresh }) => {
  async function setup(clock?: () => Date) {
    const database = await (await fresh()).open();
    const outbox = createOutboxStore(database, { clock });
    const enqueue = (key: string, n: number): Promise<boolean> =>
      outbox.enqueue(database.db, { eventId: `evt_${key}_${n}`, keyId: key, type: 'usage.settled', payload: { key, n } });
    return { database, outbox, enqueue };
  }

  const SECRET = 'whsec_' + Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');

  it('POSTs each event signed, as JSON, and marks it delivered on a 2xx', async () => {
    const { outbox, enqueue } = await setup();
    const { logger, lines } = captureLogger();
    const fake = fakeFetch(() => new Response(null, { status: 204 }));
    const worker = createBillingWebhookWorker({ outbox, url: 'https://billing.example/hook?token=t0ps3cret', secret: SECRET, fetchImpl: fake.impl, logger });
    await enqueue('A', 1);
    await worker.flush(5000);

    assert.equal(fake.calls.length, 1);
    const [call] = fake.calls;
    const headers = call!.init.headers as Record<string, string>;
    assert.equal(call!.init.method, 'POST');
    assert.equal(call!.init.redirect, 'manual');
    assert.ok(call!.init.signal, 'each attempt has a time limit');
    assert.equal(headers['content-type'], 'application/json');
    assert.equal(headers['webhook-id'], 'evt_A_1');
    assert.match(headers['webhook-timestamp']!, /^\d+$/);
    const body = String(call!.init.body);
    assert.equal(headers['webhook-signature'], specSignature(webhookSigningKey(SECRET), 'evt_A_1', Number(headers['webhook-timestamp']), body));
    assert.ok(verifyStandardWebhook(SECRET, headers, body));
    const stored = await outbox.get('evt_A_1');
    assert.equal(body, webhookBody(stored!));
    assert.deepEqual(JSON.parse(body), { id: 'evt_A_1', type: 'usage.settled', timestamp: stored!.createdAt, data: { key: 'A', n: 1 } });
    assert.ok(stored!.deliveredAt);
    assert.equal(await outbox.pending(), 0);
    const logged = lines.join('\n');
    assert.ok(!logged.includes('t0ps3cret') && !logged.includes(SECRET.slice(6)), 'neither the secret nor URL credentials are logged');
  });

  it('retries failures with the same id and body after a backoff, keeping each key in order with one delivery in flight', async () => {
    const { outbox, enqueue } = await setup();
    const { logger, lines } = captureLogger();
    for (let n = 1; n <= 4; n++) for (const key of ['A', 'B', 'C']) await enqueue(key, n);
    const failed = new Set<string>();
    // Each event fails on its first attempt (503, then a network error, then a redirect, in turn), then succeeds slowly.
    const fake = fakeFetch(async (body, n) => {
      if (!failed.has(body.id)) {
        failed.add(body.id);
        if (n % 3 === 0) throw new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } });
        return new Response('down', { status: n % 3 === 1 ? 503 : 302, headers: { location: 'https://elsewhere.example/' } });
      }
      await sleep(15);
      return new Response('ok', { status: 200 });
    });
    const worker = createBillingWebhookWorker({
      outbox,
      url: 'https://billing.example/hook',
      secret: SECRET,
      fetchImpl: fake.impl,
      logger,
      pollMs: 50,
      backoff: { baseMs: 20, maxMs: 40 },
    });
    worker.start();
    try {
      await waitFor('every event delivered', async () => (await outbox.pending()) === 0);
    } finally {
      await worker.stop();
    }
    assert.equal(fake.maxPerKey(), 1, 'never two deliveries of one key at once');
    for (const key of ['A', 'B', 'C']) {
      const seen = fake.calls.filter((c) => c.body.data.key === key).map((c) => c.body.data.n as number);
      assert.deepEqual(seen, [1, 1, 2, 2, 3, 3, 4, 4], `key ${key}: each event twice (failed, then delivered), in order`);
    }
    const byId = new Map<string, Set<string>>();
    for (const c of fake.calls) byId.set(c.body.id, (byId.get(c.body.id) ?? new Set()).add(String(c.init.body)));
    assert.ok([...byId.values()].every((bodies) => bodies.size === 1), 'a retry repeats the body byte for byte');
    const e = await outbox.get('evt_B_2');
    assert.equal(e?.attempts, 2);
    const warnings = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'billing event not delivered; will retry');
    assert.equal(warnings.length, 12);
    assert.ok(warnings.some((w) => String(w.error).startsWith('HTTP 302')));
    assert.ok(warnings.some((w) => String(w.error).includes('ECONNREFUSED')));
    assert.ok(warnings.every((w) => (w.retry_in_ms as number) >= 10 && (w.retry_in_ms as number) <= 40));
  });

  it('schedules the next attempt per the backoff, honouring Retry-After up to the cap', async () => {
    const now = Date.parse('2025-01-01T00:00:00.000Z');
    // The worker and the outbox share one clock, as they do in the service.
    const { outbox, enqueue } = await setup(() => new Date(now));
    await enqueue('A', 1);
    await enqueue('B', 1);
    const fake = fakeFetch((body) => new Response(null, { status: 503, headers: body.data.key === 'B' ? { 'retry-after': '3600' } : {} }));
    const worker = createBillingWebhookWorker({
      outbox,
      url: 'https://billing.example/hook',
      secret: 'raw-secret-string',
      fetchImpl: fake.impl,
      logger: pino({ level: 'silent' }),
      clock: () => new Date(now),
      backoff: { baseMs: 1000, maxMs: 60_000, random: () => 1 },
    });
    await worker.flush(5000);
    assert.equal((await outbox.get('evt_A_1'))?.nextAttemptAt, new Date(now + 1000).toISOString());
    assert.equal((await outbox.get('evt_B_1'))?.nextAttemptAt, new Date(now + 60_000).toISOString());
    assert.equal((await outbox.get('evt_A_1'))?.lastError, 'HTTP 503');
  });

  it('does not follow a redirect to another server', async () => {
    const { outbox, enqueue } = await setup();
    const hits: Received[] = [];
    const elsewhere = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d));
      req.on('end', () => {
        hits.push({ headers: req.headers, body });
        res.end('thanks');
      });
    });
    await new Promise<void>((r) => elsewhere.listen(0, '127.0.0.1', r));
    const redirector = createServer((_req, res) => {
      res.writeHead(307, { location: `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/stolen` }).end();
    });
    await new Promise<void>((r) => redirector.listen(0, '127.0.0.1', r));
    try {
      await enqueue('A', 1);
      const worker = createBillingWebhookWorker({
        outbox,
        url: `http://127.0.0.1:${(redirector.address() as AddressInfo).port}/hook`,
        secret: SECRET,
        logger: pino({ level: 'silent' }),
      });
      await worker.flush(5000);
      assert.equal(hits.length, 0);
      const e = await outbox.get('evt_A_1');
      assert.equal(e?.deliveredAt, null);
      assert.match(e?.lastError ?? '', /^HTTP 307 \(redirects are not followed/);
    } finally {
      await new Promise((r) => redirector.close(r));
      await new Promise((r) => elsewhere.close(r));
    }
  });

  it('flush gives up on a receiver that does not answer at its deadline, and the event is offered again later', async () => {
    const { outbox, enqueue } = await setup();
    await enqueue('A', 1);
    const fake = fakeFetch(
      (_b, n) =>
        n === 1
          ? new Promise<Response>((_resolve, reject) => {
              const signal = fake.calls[0]!.init.signal!;
              signal.addEventListener('abort', () => reject(signal.reason as Error));
            })
          : new Response(null, { status: 200 }),
    );
    const worker = createBillingWebhookWorker({
      outbox,
      url: 'https://billing.example/hook',
      secret: SECRET,
      fetchImpl: fake.impl,
      logger: pino({ level: 'silent' }),
      backoff: { baseMs: 10, maxMs: 10 },
    });
    const started = Date.now();
    await worker.flush(300);
    assert.ok(Date.now() - started < 3000, 'flush is bounded by its timeout');
    const e = await outbox.get('evt_A_1');
    assert.equal(e?.deliveredAt, null);
    assert.match(e?.lastError ?? '', /flush deadline/);
    await sleep(20);
    await worker.flush(5000);
    assert.ok((await outbox.get('evt_A_1'))?.deliveredAt);
    assert.equal(new Set(fake.calls.map((c) => c.body.id)).size, 1);
  });

  it('a kick delivers at once instead of at the next poll', async () => {
    const { outbox, enqueue } = await setup();
    const fake = fakeFetch(() => new Response(null, { status: 200 }));
    const worker = createBillingWebhookWorker({
      outbox,
      url: 'https://billing.example/hook',
      secret: SECRET,
      fetchImpl: fake.impl,
      logger: pino({ level: 'silent' }),
      pollMs: 60_000,
    });
    worker.start();
    try {
      await sleep(50);
      await enqueue('A', 1);
      const kickedAt = Date.now();
      worker.kick();
      await waitFor('the kicked event', () => fake.calls.length === 1, 3000);
      assert.ok(Date.now() - kickedAt < 3000);
    } finally {
      await worker.stop();
    }
  });

  it("settlement writes one usage.settled event with the ledger's own facts, only when billing events are on", async () => {
    const { database, outbox } = await setup();
    const ledger = createLedger(database);
    const { record: key } = await createKeysStore(database).create({ name: 'billing', budgetMicros: null });
    const model = createModelRegistry(defaultModels).lookup('alibaba/z-image-turbo')!;
    const pricing = { promptExpansion: false, markup: parseMarkup('1.5') };
    let kicks = 0;
    const billingEvents = { kick: () => void kicks++ };
    const settle = async (requestId: string, on: boolean) => {
      await ledger.reserve({ requestId, clientRequestId: `label-${requestId}`, keyId: key.id, model: model.id, endpoint: model.endpoint, user: 'cust.7', maxChargeMicros: 100_000n, jobs: 1 });
      await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: `fal-${requestId}` });
      const jobs = [{ jobId: jobIdFor(requestId, 0), falRequestId: `fal-${requestId}`, images: [{ width: 1024, height: 1024 }, { width: 2048, height: 1024 }], billableUnits: null }];
      return settleCompleted(ledger, model, requestId, pricing, jobs, on ? { billingEvents } : {});
    };

    const out = await settle('trace.0001.a', true);
    await settleCompleted(ledger, model, 'trace.0001.a', pricing, [{ jobId: jobIdFor('trace.0001.a', 0), falRequestId: 'fal-trace.0001.a', images: [], billableUnits: null }], { billingEvents });
    assert.equal(kicks, 1, 'a repeat settles nothing and announces nothing');
    const event = await outbox.get('evt_trace~0001~a');
    const row = await ledger.getRequest('trace.0001.a');
    assert.ok(event && row);
    assert.equal(event.keyId, key.id);
    assert.equal(event.type, 'usage.settled');
    assert.deepEqual(event.payload, {
      request_id: 'trace.0001.a',
      client_request_id: 'label-trace.0001.a',
      key_id: key.id,
      model: 'alibaba/z-image-turbo',
      user: 'cust.7',
      images: 2,
      fal_request_ids: ['fal-trace.0001.a'],
      charge_usd: out.charge.usd,
      credits: out.charge.credits,
      created_at: row.createdAt,
      settled_at: row.settledAt,
    });
    // 1 + 2 megapixels at $0.005, × 1.5.
    assert.equal(out.charge.usd, '0.022500');

    await settle('req_off', false);
    assert.equal(await outbox.get('evt_req_off'), null);
    assert.equal(await outbox.pending(), 1);
  });
});
