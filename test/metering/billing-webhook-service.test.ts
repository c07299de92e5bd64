import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { it } from 'node:test';
import { verifyStandardWebhook } from '../../src/metering/billing-webhook.js';
import { formatUsd } from '../../src/metering/money.js';
import { createOutboxStore } from '../../src/metering/outbox-store.js';
import { billingEventId } from '../../src/metering/settlement.js';
import type { ExportRow } from '../../src/metering/reports.js';
import { describeEachDialect } from '../helpers/databases.js';
import { OTHER_KEY, startTestService, TEST_KEY } from '../helpers/service.js';

const SECRET = 'whsec_' + Buffer.from('billing-webhook-e2e-secret-0123456789').toString('base64');

interface Delivery {
  id: string;
  headers: IncomingHttpHeaders;
  body: string;
  verified: boolean;
  answer: number | 'hung up';
}

type Mode = 'down' | 'ok';

/**
 * The billing system: a plain node:http server on a fixed loopback port that
 * can be closed (connection refused) and reopened. Once up it answers 503 to
 * its first `failFirst` deliveries, then takes one event and hangs up before
 * answering (the sender cannot know it arrived), then answers 200 slowly
 * enough that overlapping deliveries of one key would show.
 */
function billingReceiver(failFirst: number) {
  const deliveries: Delivery[] = [];
  const inFlightByKey = new Map<string, number>();
  let maxInFlightPerKey = 0;
  let server: Server | undefined;
  let port = 0;
  const sockets = new Set<Socket>();
  let hungUp = false;

  function handle(raw: Buffer, headers: IncomingHttpHeaders, respond: (status: number) => void, hangUp: () => void): void {
    const body = raw.toString('utf8');
    const verified = verifyStandardWebhook(SECRET, headers, raw);
    const parsed = JSON.parse(body) as { id: string; data: { key_id: string } };
    const key = parsed.data.key_id;
    inFlightByKey.set(key, (inFlightByKey.get(key) ?? 0) + 1);
    maxInFlightPerKey = Math.max(maxInFlightPerKey, inFlightByKey.get(key)!);
    const record = (answer: Delivery['answer']): void => {
      inFlightByKey.set(key, inFlightByKey.get(key)! - 1);
      deliveries.push({ id: String(headers['webhook-id']), headers, body, verified, answer });
    };
    const n = deliveries.length + [...inFlightByKey.values()].reduce((a, b) => a + b, 0);
    if (n <= failFirst) {
      record(503);
      respond(503);
    } else if (!hungUp) {
      hungUp = true;
      record('hung up');
      hangUp();
    } else {
      setTimeout(() => {
        record(200);
        respond(200);
      }, 25);
    }
  }

  return {
    deliveries,
    maxInFlightPerKey: () => maxInFlightPerKey,
    url: () => `http://127.0.0.1:${port}/hooks/billing`,
    /** Claims a free port, then closes it: the receiver starts out refusing connections. */
    async reserve(): Promise<void> {
      const probe = createServer();
      await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
      port = (probe.address() as AddressInfo).port;
      await new Promise((r) => probe.close(r));
    },
    async up(): Promise<void> {
      server = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () =>
          handle(
            Buffer.concat(chunks),
            req.headers,
            (status) => res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 200 ? 'ok' : 'down'),
            () => req.socket.destroy(),
          ),
        );
      });
      server.on('connection', (s: Socket) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
      });
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(port, '127.0.0.1', () => resolve());
      });
    },
    async close(): Promise<void> {
      for (const s of sockets) s.destroy();
      if (server?.listening) await new Promise((r) => server!.close(r));
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** `requestId` is ours (meta.request_id); `label` what the answer's x-request-id carried (the caller's, when it sent one). */
async function generate(url: string, key: string, requestId?: string): Promise<{ requestId: string; label: string; falRequestId: string; cost: string }> {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...(requestId ? { 'x-request-id': requestId } : {}) },
    body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'an invoice, watercolour', image_size: 'square' }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const ours = (JSON.parse(text) as { meta: { request_id: string } }).meta.request_id;
  return { requestId: ours, label: res.headers.get('x-request-id')!, falRequestId: res.headers.get('x-fal-request-id')!, cost: res.headers.get('x-usage-cost-usd')! };
}

describeEachDialect('billing webhook through the service', ({ dialect, fresh }) => {
  // Bounded, so that a hang anywhere fails here with a name instead of stalling the run.
  it('delivers every settled request through a receiver outage: once per id, signed, in order per key, none lost', { timeout: 120_000 }, async () => {
    const env: Record<string, string> = {
      BILLING_WEBHOOK_SECRET: SECRET,
      BILLING_WEBHOOK_MAX_BACKOFF_MS: '150',
    };
    if (dialect === 'postgres') {
      const storage = await fresh();
      await storage.open(); // creates and migrates its throwaway schema
      const url = new URL(storage.options.databaseUrl!);
      url.searchParams.set('options', `-c search_path=${storage.options.schema!}`);
      env.DATABASE_URL = url.toString();
      env.FILE_URL_SECRET = 'x'.repeat(32);
    }
    const receiver = billingReceiver(3);
    await receiver.reserve();
    const t = await startTestService({ ...env, BILLING_WEBHOOK_URL: receiver.url() });
    try {
      // Both keys at once, each key's requests one after another: the order
      // in which one key's requests settle is the order they were sent.
      const perKey: Record<string, Array<Awaited<ReturnType<typeof generate>>>> = { [TEST_KEY]: [], [OTHER_KEY]: [] };
      await Promise.all(
        [TEST_KEY, OTHER_KEY].map(async (key) => {
          for (let i = 0; i < 4; i++) {
            // One caller-chosen request id with dots: a label only; the event id is built from ours.
            const id = key === OTHER_KEY && i === 1 ? `billing.e2e.${dialect}.${Date.now()}` : undefined;
            perKey[key]!.push(await generate(t.url, key, id));
          }
        }),
      );
      const sent = [...perKey[TEST_KEY]!, ...perKey[OTHER_KEY]!];

      // The receiver is down: attempts fail with connection refused and are rescheduled.
      const outbox = createOutboxStore(t.service.database);
      await waitFor('failed attempts while the receiver is down', async () => {
        const e = await outbox.get(billingEventId(sent[0]!.requestId));
        return (e?.attempts ?? 0) >= 2 && /ECONNREFUSED|fetch failed/.test(e?.lastError ?? '');
      });
      assert.equal(receiver.deliveries.length, 0);
      assert.equal(await outbox.pending(), sent.length);

      await receiver.up();
      await waitFor('every event delivered', async () => (await outbox.pending()) === 0);

      const settled: ExportRow[] = [];
      for await (const row of t.service.reports.exportRows()) settled.push(row);
      assert.deepEqual(settled.map((r) => r.request_id).sort(), sent.map((s) => s.requestId).sort(), 'every request was settled');

      const { deliveries } = receiver;
      assert.ok(deliveries.every((d) => d.verified), 'every delivery carries a valid Standard Webhooks signature');
      const ids = new Set(deliveries.map((d) => d.id));
      assert.deepEqual([...ids].sort(), sent.map((s) => billingEventId(s.requestId)).sort(), 'one distinct event per settled request, none lost');
      const accepted = deliveries.filter((d) => d.answer === 200).map((d) => d.id);
      assert.deepEqual(accepted.slice().sort(), [...ids].sort(), 'each event was accepted exactly once');
      // The receiver's outage (503s) and the lost acknowledgement made repeats, each with the id (and body) of the original.
      assert.ok(deliveries.length > ids.size);
      for (const id of ids) {
        const bodies = new Set(deliveries.filter((d) => d.id === id).map((d) => d.body));
        assert.equal(bodies.size, 1, `${id} was always sent with the same body`);
        assert.equal(JSON.parse([...bodies][0]!).id, id);
      }
      const dotted = sent.find((s) => s.label.includes('.'))!;
      assert.notEqual(dotted.requestId, dotted.label);
      assert.ok(ids.has(billingEventId(dotted.requestId)));
      const dottedEvent = JSON.parse(deliveries.find((d) => d.id === billingEventId(dotted.requestId))!.body) as { data: Record<string, unknown> };
      assert.equal(dottedEvent.data['client_request_id'], dotted.label, 'the event carries the caller’s label beside our id');
      assert.ok([...ids].every((id) => !id.includes('.')));

      // Per key: once an event arrived, no earlier event of that key came again, and first arrivals are in settlement order.
      assert.equal(receiver.maxInFlightPerKey(), 1, 'never two deliveries of one key at once');
      const keyIds = new Set<string>();
      for (const key of [TEST_KEY, OTHER_KEY]) {
        const order = perKey[key]!.map((s) => billingEventId(s.requestId));
        const seen = deliveries.filter((d) => order.includes(d.id)).map((d) => order.indexOf(d.id));
        assert.deepEqual(seen.slice().sort((a, b) => a - b), seen, `key ${key}: deliveries in settlement order ${JSON.stringify(seen)}`);
        assert.deepEqual([...new Set(seen)], [0, 1, 2, 3]);
        for (const d of deliveries.filter((x) => order.includes(x.id))) keyIds.add((JSON.parse(d.body) as { data: { key_id: string } }).data.key_id);
      }
      assert.equal(keyIds.size, 2, 'the two keys have their own key ids');

      // The event says what the ledger says.
      for (const row of settled) {
        const d = deliveries.find((x) => x.id === billingEventId(row.request_id))!;
        const event = JSON.parse(d.body) as { type: string; data: Record<string, unknown> };
        const s = sent.find((x) => x.requestId === row.request_id)!;
        assert.equal(event.type, 'usage.settled');
        assert.deepEqual(event.data, {
          request_id: row.request_id,
          client_request_id: s.label === s.requestId ? null : s.label,
          key_id: row.key_id,
          model: 'alibaba/z-image-turbo',
          user: null,
          images: 1,
          fal_request_ids: [s.falRequestId],
          charge_usd: formatUsd(row.charge_micros),
          credits: Number(row.credits),
          created_at: row.created_at,
          settled_at: row.settled_at,
        });
        assert.equal(event.data.charge_usd, s.cost, 'the caller was told the same charge');
      }
      const logs = JSON.stringify(t.logs);
      assert.ok(!logs.includes(SECRET.slice('whsec_'.length)), 'the secret is never logged');
    } finally {
      await t.close();
      await receiver.close();
    }
  });
});
