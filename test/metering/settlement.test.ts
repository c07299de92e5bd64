import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createReconciler, type ReconcileReport } from '../../src/metering/reconcile.js';
import { formatUsd, parseMarkup } from '../../src/metering/money.js';
import { USAGE_SETTLED } from '../../src/metering/settlement.js';
import { auditLedger, formatAudit, type CallerAnswer } from '../helpers/billing-audit.js';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * Exactly once: settlement (src/metering/settlement.ts) when fal's
 * webhook, the status poll and reconciliation race for the same jobs. The
 * service waits on fal's webhook with no grace (FAL_WEBHOOK_GRACE_MS=0), so
 * each job is also polled from the start; meanwhile reconciliation rounds
 * run back to back: the service's own, and one that believes the owner
 * dead (no lease, no age limit), which races the live path for every
 * request. Once fal is done, the caller is charged once, the ledger equals
 * fal's billing log job for job, and each settled request has one billing
 * event.
 */

const MODEL = 'alibaba/z-image-turbo';
const SECRET = 'whsec_' + Buffer.from('settlement-race-secret-0123456789').toString('base64');

/** Forwards fal's callbacks to the service (its URL is known only once it listens). */
function forwarder() {
  let target = '';
  const server: Server = createServer((req, res) => {
    const up = httpRequest(`${target}${req.url}`, { method: req.method, headers: req.headers }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  return {
    setTarget: (t: string) => (target = t),
    listen: () => new Promise<string>((r) => server.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))),
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** The billing system: takes every event. */
function receiver() {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  return {
    listen: () => new Promise<string>((r) => server.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(server.address() as AddressInfo).port}/billing`))),
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

async function until(fn: () => Promise<boolean> | boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Each request's body: plain jobs, fan-outs (several jobs), one job of a fan-out failing at fal, a result that fails once. */
const BODIES: Array<Record<string, unknown>> = [
  ...Array.from({ length: 8 }, (_, i) => ({ prompt: `race plain ${i}`, image_size: i % 2 ? 'square' : 'landscape_4_3' })),
  ...Array.from({ length: 3 }, (_, i) => ({ prompt: `race fan ${i}`, image_size: 'square', n: 6 })),
  { prompt: 'race half-failed', image_size: 'square', n: 6 },
  { prompt: 'race result-once', image_size: 'square' },
];

describeEachDialect('settlement: webhook, polling and reconciliation racing for the same jobs', (ctx) => {
  let t: TestService;
  const hooks = forwarder();
  const billing = receiver();

  before(async () => {
    const storage = await ctx.storage();
    const hookUrl = await hooks.listen();
    t = await startTestService(
      {
        ...(await serviceEnv(storage)),
        FAL_WEBHOOKS: 'true',
        PUBLIC_BASE_URL: hookUrl,
        FAL_WEBHOOK_GRACE_MS: '0',
        BILLING_WEBHOOK_URL: await billing.listen(),
        BILLING_WEBHOOK_SECRET: SECRET,
        RECONCILE_INTERVAL_MS: '0',
      },
      { latencyMs: 400, webhookRetry: { baseDelayMs: 50 }, kinder: ['unlimited_concurrency'] },
    );
    hooks.setTarget(t.url);
  });
  after(async () => {
    await t?.close();
    await hooks.close();
    await billing.close();
  });

  it('charged once, the ledger equals fal’s bill job for job, one billing event per settled request', async (tc) => {
    // The second job of the half-failed fan-out fails after it started (fal bills its own 5xx nothing); one result answers 502 once;
    // a few first result fetches are slow, so that whoever asks first (mostly the live path) gives the other a head start.
    t.emulator.armFault([
      { kind: 'fail_after_start', prompt_contains: 'race half-failed', times: 1 },
      { phase: 'result', status: 502, prompt_contains: 'race result-once', times: 1 },
      ...[0, 1, 2, 3].map((i) => ({ kind: 'delay' as const, phase: 'result' as const, delay_ms: 1_000, prompt_contains: `race plain ${i}`, times: 1 })),
      { kind: 'delay', phase: 'result', delay_ms: 1_000, prompt_contains: 'race fan 0', times: 1 },
    ]);
    const s = t.service;
    // A reconciliation that takes every open request for a dead owner's: it races the live path for each.
    const peer = createReconciler({ ledger: s.ledger, fal: s.fal, registry: s.registry, markup: parseMarkup('1'), logger: s.logger, billingEvents: { kick() {} } });
    let answering = true;
    const rounds: ReconcileReport[] = [];
    const racing = (async () => {
      while (answering) {
        const [own, theirs] = await Promise.all([s.reconciler.run({ olderThanMs: 0 }), peer.run({ olderThanMs: 0 })]);
        rounds.push(own, theirs);
      }
    })();

    const answers: CallerAnswer[] = await Promise.all(
      BODIES.map(async (body, i) => {
        const requestId = `req-race-${ctx.dialect}-${i}`;
        const res = await fetch(`${t.url}/v1/images/generations`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'x-request-id': requestId },
          body: JSON.stringify({ model: MODEL, ...body }),
        }).catch(() => undefined);
        if (res) await res.arrayBuffer();
        return { requestId, status: res?.status ?? null, costUsd: res?.headers.get('x-usage-cost-usd') };
      }),
    );
    answering = false;
    await racing;

    // fal finishes everything; the rounds that follow record what is left.
    await until(() => t.emulator.jobs().every((j) => j.status === 'COMPLETED'), 'fal to finish every job');
    await until(async () => {
      const [a, b] = await Promise.all([s.reconciler.run({ olderThanMs: 0 }), peer.run({ olderThanMs: 0 })]);
      return a.examined + b.examined === 0 && a.jobsClosed.length + b.jobsClosed.length === 0;
    }, 'reconciliation to have nothing left');

    assert.ok(answers.filter((a) => a.status === 200).length >= BODIES.length - 1, `answers: ${JSON.stringify(answers.map((a) => a.status))}`);
    assert.ok(rounds.some((r) => r.examined > 0), 'reconciliation rounds looked at requests still being answered');
    assert.ok(s.fal.stats.webhookWakeups > 0, 'fal’s webhook woke some jobs');
    assert.ok((t.emulator.stats().status ?? 0) > 0, 'and jobs were polled');

    const settledByRounds = rounds.reduce((n, r) => n + r.settled.length + r.released.length, 0);
    const lostRaces = t.logs.filter((l) => String(l.msg).startsWith('another process')).length;
    tc.diagnostic(`${rounds.length} rounds settled or released ${settledByRounds} requests; the live path found ${lostRaces} already closed`);
    const report = await auditLedger(s.database.db, { billing: t.emulator.billing(), jobIds: new Set(t.emulator.jobs().map((j) => j.request_id)) }, answers);
    assert.ok(report.clean, formatAudit(report));

    // One usage.settled event per settled request, carrying the ledger's charge; none for the others.
    const events = await s.database.db.selectFrom('outbox').select(['event_id', 'type', 'payload_json']).execute();
    const requests = await s.database.db.selectFrom('requests').select(['id', 'status', 'charge_micros']).execute();
    const settled = requests.filter((r) => r.status === 'settled');
    assert.equal(events.length, settled.length, 'one billing event per settled request');
    for (const r of settled) {
      const mine = events.map((e) => ({ type: e.type, data: JSON.parse(e.payload_json) as { request_id: string; charge_usd: string } })).filter((e) => e.data.request_id === r.id);
      assert.equal(mine.length, 1, `billing events of ${r.id}`);
      assert.equal(mine[0]!.type, USAGE_SETTLED);
      assert.equal(mine[0]!.data.charge_usd, formatUsd(BigInt(r.charge_micros)), 'the event carries the ledger’s charge');
    }
  });
});
