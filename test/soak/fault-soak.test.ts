import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CALL_KINDS, JOB_KINDS } from '../../src/emulator/faults.js';
import { redactDatabaseUrl } from '../../src/db/index.js';
import { describeDrift, formatAudit } from '../helpers/billing-audit.js';
import { POSTGRES_URL, postgresAvailability } from '../helpers/databases.js';
import { runFaultSoak, type SoakResult } from './driver.js';
import { coverage, EDIT_IMAGE_URL, planSoak } from './scenarios.js';

/**
 * Issue 16's acceptance as a test: every fault the emulator knows, mixed into
 * many requests at concurrency, callers who leave, and a SIGKILL of the
 * service mid-load with a restart on the same database, on SQLite and on
 * PostgreSQL. Once fal's jobs are all final and the service has reconciled
 * what it left open, the ledger must equal fal's bill job for job, and the
 * callers' answers must equal their charges (test/helpers/billing-audit.ts).
 * The longer run with its figures is bench/fault-soak.ts.
 *
 * SOAK_SEED replays a run (the seed is printed); SOAK_REQUESTS and
 * SOAK_CONCURRENCY change its size; SOAK_KEEP_LOGS=1 keeps the processes' logs.
 */
const SEED = process.env.SOAK_SEED ? Number(process.env.SOAK_SEED) >>> 0 : 1616;
const REQUESTS = Number(process.env.SOAK_REQUESTS ?? 120);
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY ?? 8);
/** One key that never runs out, two that do during the load. */
const BUDGETS = ['5', '1', '0.25'];

describe('the soak plan', () => {
  it('arms every fault kind, every call kind on every phase the gateway calls, and early aborts', () => {
    const seen = coverage(planSoak({ seed: SEED, requests: REQUESTS, keys: BUDGETS.length, requestTimeoutMs: 6000 }));
    for (const kind of JOB_KINDS) assert.ok(seen.has(`${kind}@job`), `job kind ${kind}`);
    for (const kind of CALL_KINDS.filter((k) => k !== 'cancel_refused')) {
      for (const phase of ['submit', 'status', 'stream', 'result', 'cancel']) assert.ok(seen.has(`${kind}@${phase}`), `${kind} on ${phase}`);
    }
    assert.ok(seen.has('cancel_refused@cancel'));
    assert.ok(seen.has('abort'));
  });

  it('mixes image edits (image_url on a generation) into the load', () => {
    const plan = planSoak({ seed: SEED, requests: REQUESTS, keys: BUDGETS.length, requestTimeoutMs: 6000 });
    assert.ok(plan.filter((r) => r.body['image_url'] === EDIT_IMAGE_URL).length >= REQUESTS / 20, 'edits in the mix');
  });

  it('is the same plan for the same seed, and another for another seed', () => {
    const a = planSoak({ seed: SEED, requests: 50, keys: 3, requestTimeoutMs: 6000 });
    assert.deepEqual(planSoak({ seed: SEED, requests: 50, keys: 3, requestTimeoutMs: 6000 }), a);
    assert.notDeepEqual(planSoak({ seed: SEED + 1, requests: 50, keys: 3, requestTimeoutMs: 6000 }), a);
  });
});

const postgres = await postgresAvailability();

for (const dialect of ['sqlite', 'postgres'] as const) {
  const name = `fault soak (${dialect})`;
  if (dialect === 'postgres' && !postgres.ok) {
    const why = `PostgreSQL not reachable at ${redactDatabaseUrl(POSTGRES_URL)}: ${postgres.reason}`;
    if (process.env.CI) {
      describe(name, () => it('needs PostgreSQL under CI', () => assert.fail(`${why} (CI is set, so this fails instead of skipping; set TEST_DATABASE_URL)`)));
    } else {
      describe(name, { skip: `${why} (set TEST_DATABASE_URL to run it)` }, () => {});
    }
    continue;
  }

  describe(name, { timeout: 300_000 }, () => {
    let soak: SoakResult;
    before(async () => {
      console.log(`fault soak (${dialect}): SOAK_SEED=${SEED} SOAK_REQUESTS=${REQUESTS} SOAK_CONCURRENCY=${CONCURRENCY}`);
      soak = await runFaultSoak({ dialect, seed: SEED, requests: REQUESTS, concurrency: CONCURRENCY, budgets: BUDGETS, killAt: 0.45, log: (l) => console.log(l) });
      console.log(summary(soak));
    });

    it('ran the whole mix: answers of every kind, a kill with requests in flight, fal jobs billed and all final', () => {
      assert.equal(soak.answers.filter(Boolean).length, REQUESTS, 'every request was sent and its fate recorded');
      assert.ok((soak.statuses.get('200') ?? 0) > REQUESTS / 4, `enough requests succeeded: ${[...soak.statuses].join(' ')}`);
      assert.ok([...soak.statuses.keys()].some((s) => /^5\d\d$/.test(s)), 'some requests were answered 5xx');
      assert.ok((soak.statuses.get('429') ?? 0) > 0, 'a budget ran out');
      assert.ok((soak.statuses.get('left early') ?? 0) > 0, 'some callers left early');
      assert.ok((soak.inFlightAtKill ?? 0) > 0, 'the SIGKILL landed with requests in flight');
      assert.ok(soak.audit.totals.billedJobs > REQUESTS / 2, 'fal billed jobs');
      assert.ok(soak.settled.jobsFinal, 'every fal job ended within the deadline');
      const edits = soak.answers.filter((a) => soak.plan[a.index]?.body['image_url'] !== undefined);
      assert.ok(edits.some((a) => a.status === 200), 'some edits succeeded (billed on fal-ai/z-image/turbo/image-to-image)');
    });

    it('fal’s bill equals the ledger job for job, to the micro-dollar, and in total', () => {
      const jobs = soak.audit.jobs;
      assert.equal(soak.audit.totals.ledgerUpstreamMicros, soak.audit.totals.falBilledMicros, formatAudit(soak.audit, soak.label));
      assert.equal(jobs.length, 0, list(jobs, soak));
    });

    it('every 200 is charged once at its x-usage-cost-usd, and no error answer is charged', () => {
      const charged = soak.audit.requests.filter((d) => d.kind !== 'hold_open');
      assert.equal(charged.length, 0, list(charged, soak));
    });

    it('no key is over budget, and no hold is left open', () => {
      const held = [...soak.audit.requests.filter((d) => d.kind === 'hold_open'), ...soak.audit.keys];
      assert.equal(held.length, 0, list(held, soak));
      assert.ok(soak.settled.holdsClosed, 'the service closed every request it held');
    });

    it('the audit is clean', () => {
      assert.ok(soak.audit.clean, formatAudit(soak.audit, soak.label));
    });
  });
}

function list(drift: ReadonlyArray<Parameters<typeof describeDrift>[0]>, soak: SoakResult): string {
  return drift.slice(0, 30).map((d) => describeDrift(d, soak.label)).join('\n') + (drift.length > 30 ? `\n... and ${drift.length - 30} more` : '');
}

function summary(soak: SoakResult): string {
  const lines = [
    `fault soak: seed ${soak.seed}; answers ${[...soak.statuses].map(([k, n]) => `${k}: ${n}`).join(', ')}; ${soak.emulatorJobs} fal jobs; ` +
      `${soak.inFlightAtKill ?? 0} requests in flight at the kill; load ${(soak.timings.loadMs / 1000).toFixed(1)} s, settle ${(soak.timings.settleMs / 1000).toFixed(1)} s, total ${(soak.timings.totalMs / 1000).toFixed(1)} s`,
    formatAudit(soak.audit, soak.label, 60),
    'drift by scenario:',
  ];
  for (const [kind, by] of soak.driftByScenario) lines.push(`  ${kind}: ${[...by].sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ')}`);
  return lines.join('\n');
}
