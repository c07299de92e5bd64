import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDatabase } from '../../src/db/index.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import {
  auditBilling,
  formatAudit,
  readLedger,
  type BilledJob,
  type CallerAnswer,
  type LedgerJob,
  type LedgerKey,
  type LedgerRequest,
  type LedgerSnapshot,
} from './billing-audit.js';
import { keyWithBudget } from './ledger.js';

/**
 * The audit on hand-made ledger records, one rule per case: a clean ledger
 * passes, and each kind of drift is found and named. A last case reads a
 * real SQLite ledger written through the ledger's own API, so the reader's
 * view of the tables is tested too.
 */

const job = (id: string, requestId: string, cost: bigint, state = 'completed', final = true): LedgerJob => ({
  id,
  falIds: [id],
  requestId,
  upstreamCostMicros: cost,
  state,
  final,
});
const request = (id: string, keyId: string, charge: bigint, state = 'settled'): LedgerRequest => ({
  id,
  keyId,
  state,
  chargeMicros: charge,
  holding: state === 'reserved' || state === 'submitted',
});
const key = (id: string, budget: bigint | null, spent: bigint, reserved = 0n): LedgerKey => ({ id, budgetMicros: budget, spentMicros: spent, reservedMicros: reserved });

/** Two requests of key k1: r1 answered 200 at $0.01 (fal job f1), r2 answered 502 (fal job f2 failed unbilled). */
function cleanCase(): { ledger: LedgerSnapshot; billing: BilledJob[]; answers: CallerAnswer[] } {
  return {
    ledger: {
      jobs: [job('f1', 'r1', 10_000n), job('f2', 'r2', 0n, 'failed')],
      requests: [request('r1', 'k1', 10_000n), request('r2', 'k1', 0n, 'failed')],
      keys: [key('k1', 50_000n, 10_000n)],
    },
    billing: [{ request_id: 'f1', usd: '0.01' }],
    answers: [
      { requestId: 'r1', status: 200, costUsd: '0.010000' },
      { requestId: 'r2', status: 502 },
    ],
  };
}

describe('billing audit', () => {
  it('passes a ledger that equals the bill and the answers', () => {
    const { ledger, billing, answers } = cleanCase();
    const report = auditBilling(ledger, billing, answers);
    assert.equal(report.clean, true, formatAudit(report));
    assert.deepEqual(report.counts, {});
    assert.equal(report.totals.falBilledMicros, 10_000n);
    assert.equal(report.totals.ledgerUpstreamMicros, 10_000n);
    assert.match(formatAudit(report), /clean: no drift/);
  });

  const cases: Array<{ name: string; change: (c: ReturnType<typeof cleanCase>) => void; expect: Record<string, number>; names: RegExp }> = [
    {
      name: 'finds a billed job with no ledger job',
      change: (c) => c.billing.push({ request_id: 'f9', usd: '0.0085' }),
      expect: { billed_job_missing: 1, totals_differ: 1 },
      names: /fal job f9 \(scenario-f9\): fal billed \$0\.008500, no ledger job/,
    },
    {
      name: 'finds a billed job recorded at $0 (a failed job fal billed)',
      change: (c) => c.billing.push({ request_id: 'f2', usd: '0.005' }),
      expect: { cost_differs: 1, totals_differ: 1 },
      names: /fal job f2 of request r2 \(scenario-r2\): fal billed \$0\.005000, ledger upstream cost \$0\.000000/,
    },
    {
      name: 'finds one billed job carried by two ledger jobs',
      change: (c) => c.ledger.jobs.push({ ...job('f1-copy', 'r1', 0n), falIds: ['f1-copy', 'f1'] }),
      expect: { billed_job_twice: 1 },
      names: /fal job f1 \(scenario-f1\): fal billed \$0\.010000 once, 2 ledger jobs carry it \(f1, f1-copy\)/,
    },
    {
      name: 'finds upstream cost fal never billed',
      change: (c) => c.ledger.jobs.push(job('f7', 'r1', 1n)),
      expect: { cost_not_billed: 1, totals_differ: 1 },
      names: /ledger job f7 of request r1 \(scenario-r1\): upstream cost \$0\.000001 fal never billed/,
    },
    {
      name: 'finds a ledger job left open',
      change: (c) => (c.ledger.jobs[1] = job('f2', 'r2', 0n, 'submitted', false)),
      expect: { job_not_final: 1 },
      names: /ledger job f2 of request r2 \(scenario-r2\): still submitted/,
    },
    {
      name: 'finds a 200 charged at other than its header',
      change: (c) => (c.answers[0]!.costUsd = '0.011'),
      expect: { ok_charge_differs: 1 },
      names: /request r1 \(scenario-r1\): answered 200 at \$0\.011000, ledger charged \$0\.010000/,
    },
    {
      name: 'finds a 200 with no ledger row',
      change: (c) => c.answers.push({ requestId: 'r5', status: 200, costUsd: '0.005' }),
      expect: { ok_not_in_ledger: 1 },
      names: /request r5 \(scenario-r5\): answered 200 \(x-usage-cost-usd \$0\.005000\), no ledger row/,
    },
    {
      name: 'finds a 200 without x-usage-cost-usd',
      change: (c) => (c.answers[0]!.costUsd = undefined),
      expect: { ok_without_cost_header: 1 },
      names: /request r1 \(scenario-r1\): answered 200 without x-usage-cost-usd/,
    },
    {
      name: 'finds a charge behind an error answer (the key spent it too)',
      change: (c) => {
        c.ledger.requests[1] = request('r2', 'k1', 5_000n);
        c.ledger.keys[0] = key('k1', 50_000n, 15_000n);
      },
      expect: { error_charged: 1 },
      names: /request r2 \(scenario-r2\): answered 502, yet charged \$0\.005000 \(settled\)/,
    },
    {
      name: 'lets an unanswered request be charged (it completed after the caller left)',
      change: (c) => {
        c.ledger.requests.push(request('r3', 'k1', 5_000n));
        c.ledger.keys[0] = key('k1', 50_000n, 15_000n);
        c.answers.push({ requestId: 'r3', status: null });
      },
      expect: {},
      names: /clean/,
    },
    {
      name: 'finds a request still holding its reservation',
      change: (c) => {
        c.ledger.requests.push(request('r4', 'k1', 0n, 'submitted'));
        c.ledger.keys[0] = key('k1', 50_000n, 10_000n, 20_000n);
      },
      expect: { hold_open: 1, reservation_left: 1 },
      names: /request r4 \(scenario-r4\) of key k1: still submitted, its reservation held[\s\S]*key k1: \$0\.020000 still reserved/,
    },
    {
      name: 'finds a key over its budget',
      change: (c) => {
        c.ledger.requests[0] = request('r1', 'k1', 60_000n);
        c.ledger.keys[0] = key('k1', 50_000n, 60_000n);
        c.answers[0]!.costUsd = '0.06';
      },
      expect: { over_budget: 1 },
      names: /key k1: spent \$0\.060000 of a \$0\.050000 budget/,
    },
    {
      name: "finds a key whose spend is not its requests' charges (a charge counted twice)",
      // A key with a budget: one without keeps no counter on its row to compare.
      change: (c) => (c.ledger.keys[0] = key('k1', 1_000_000n, 20_000n)),
      expect: { spent_differs: 1 },
      names: /key k1: spent \$0\.020000, its requests' charges sum to \$0\.010000/,
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const input = cleanCase();
      c.change(input);
      const report = auditBilling(input.ledger, input.billing, input.answers);
      assert.deepEqual(report.counts, c.expect);
      assert.equal(report.clean, Object.keys(c.expect).length === 0);
      assert.match(formatAudit(report, (id) => `scenario-${id}`), c.names);
    });
  }

  it('finds a ledger job under a fal id fal never gave a job (a refused submit)', () => {
    const { ledger, billing, answers } = cleanCase();
    ledger.jobs.push(job('refused-1', 'r2', 0n, 'duplicate'));
    const report = auditBilling(ledger, { billing, jobIds: new Set(['f1', 'f2']) }, answers);
    assert.deepEqual(report.counts, { job_unknown_to_fal: 1 });
    assert.match(formatAudit(report), /ledger job refused-1 of request r2: duplicate, under fal id refused-1 that fal never gave a job/);
    assert.equal(auditBilling(ledger, billing, answers).clean, true, 'without fal\'s job list the rule is not checked');
  });

  it('compares to the micro-dollar, whatever the decimal spelling', () => {
    const { ledger, answers } = cleanCase();
    assert.equal(auditBilling(ledger, [{ request_id: 'f1', usd: '0.0100' }], answers).clean, true);
    const off = auditBilling(ledger, [{ request_id: 'f1', usd: '0.010001' }], answers);
    assert.deepEqual(off.counts, { cost_differs: 1, totals_differ: 1 });
  });

  it('caps a long report and says how much it left out', () => {
    const { ledger, answers } = cleanCase();
    const billing = [{ request_id: 'f1', usd: '0.01' }, ...Array.from({ length: 5 }, (_, i) => ({ request_id: `x${i}`, usd: '0.001' }))];
    const text = formatAudit(auditBilling(ledger, billing, answers), undefined, 2);
    assert.match(text, /\.\.\. and 3 more/);
  });

  describe('reading a real ledger', () => {
    const dirs: string[] = [];
    after(async () => {
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    });

    it('sees the jobs, charges, holds and budgets the ledger wrote', async () => {
      const dataDir = await mkdtemp(join(tmpdir(), 'gw-audit-'));
      dirs.push(dataDir);
      const database = await createDatabase({ dataDir });
      try {
        const ledger = createLedger(database);
        const keyId = await keyWithBudget(database, 1_000_000n);
        const base = { keyId, model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', maxChargeMicros: 20_000n };
        assert.deepEqual(await ledger.reserve({ ...base, requestId: 'r-done', jobs: 1 }), { ok: true });
        assert.deepEqual(await ledger.reserve({ ...base, requestId: 'r-open', jobs: 1 }), { ok: true });
        await ledger.recordSubmit({ jobId: jobIdFor('r-done', 0), falRequestId: 'fal-done' });
        await ledger.recordSubmit({ jobId: jobIdFor('r-open', 0), falRequestId: 'fal-open' });
        await ledger.settleJobs({
          jobs: [{ jobId: jobIdFor('r-done', 0), images: 1, pixels: 1024 * 1024, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5_000n }],
          settle: { requestId: 'r-done', chargeMicros: 6_000n, credits: 12, images: 1 },
        });

        const snapshot = await readLedger(database.db);
        const report = auditBilling(snapshot, [{ request_id: 'fal-done', usd: '0.005' }], [
          { requestId: 'r-done', status: 200, costUsd: '0.006' },
          { requestId: 'r-open', status: null },
        ]);
        assert.deepEqual(report.counts, { job_not_final: 1, hold_open: 1, reservation_left: 1 }, formatAudit(report));
        assert.equal(report.totals.ledgerUpstreamMicros, 5_000n);
        assert.equal(report.totals.callerChargedMicros, 6_000n);
        assert.deepEqual(snapshot.keys.map((k) => [k.budgetMicros, k.spentMicros, k.reservedMicros]), [[1_000_000n, 6_000n, 20_000n]]);
      } finally {
        await database.close();
      }
    });
  });
});
