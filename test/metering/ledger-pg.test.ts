import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createLedger, jobIdFor, strayIdFor } from '../../src/metering/ledger.js';
import { describeEachDialect, type DialectContext } from '../helpers/databases.js';
import { keyWithBudget, reserveInput, uid } from '../helpers/ledger.js';

/**
 * The request path's writes as PostgreSQL runs them, one statement each
 * (src/metering/ledger-pg.ts), against what
 * the transactions SQLite runs answer: the same rows and results.
 */
describeEachDialect('the request path in one statement per write', (ctx: DialectContext) => {
  it('settles several jobs with a stray and a job completed before, counting each cost once', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const requestId = uid('req');
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 2, inputHashes: ['h0', 'h1'], estimates: [7n, 8n] }), { ok: true });
    const [one, two] = [jobIdFor(requestId, 0), jobIdFor(requestId, 1)];
    const reserved = await ledger.getRequest(requestId);
    assert.deepEqual(reserved?.jobs.map((j) => [j.id, j.status, j.inputHash, j.estimateMicros]), [
      [one, 'submitting', 'h0', 7n],
      [two, 'submitting', 'h1', 8n],
    ]);
    const submitted = await ledger.recordSubmit({ jobId: one, falRequestId: uid('fal') });
    assert.deepEqual([submitted.id, submitted.status], [one, 'submitted']);
    assert.equal((await ledger.getRequest(requestId))?.status, 'reserved');
    await ledger.recordSubmit({ jobId: two, falRequestId: uid('fal') });
    const stray = uid('fal');
    await ledger.recordStrays({ requestId, endpoint: 'e', falRequestIds: [stray] });
    await ledger.completeJob({ jobId: strayIdFor(requestId, stray), images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 1_000n });
    // The first job completed already (reconciliation, say): its cost stays what it is.
    await ledger.completeJob({ jobId: one, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 300n });
    const jobs = [
      { jobId: one, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 999n },
      { jobId: two, images: 2, pixels: 2, unitsEstimate: '2', unitsFal: '3', upstreamCostMicros: 20n },
    ];
    const out = await ledger.settleJobs({ jobs, settle: { requestId, chargeMicros: 50n, credits: 5, images: 3 } });
    assert.deepEqual(out.jobs.map((j) => [j.job.id, j.changed, j.unitsMismatch, j.job.upstreamCostMicros, j.job.status]), [
      [one, false, false, 300n, 'completed'],
      [two, true, true, 20n, 'completed'],
    ]);
    const r = out.settlement.request;
    assert.deepEqual([out.settlement.settled, r.status, r.chargeMicros, r.credits, r.images, r.upstreamCostMicros], [true, 'settled', 50n, 5n, 3, 1_320n]);
    assert.equal((await ledger.getRequest(requestId))?.upstreamCostMicros, 1_320n);
  });

  it('leaves a request another process took over, and its jobs, to that process', async () => {
    const database = await ctx.open();
    const mine = createLedger(database, { leaseId: 'lease-a', budgetSlices: false });
    const keyId = await keyWithBudget(database, null);
    const requestId = uid('req');
    await mine.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 1 });
    const job = jobIdFor(requestId, 0);
    await mine.recordSubmit({ jobId: job, falRequestId: uid('fal') });
    assert.equal(await mine.adopt({ requestId, fromLeaseId: 'lease-a', toLeaseId: 'lease-b' }), true);
    const out = await mine.settleJobs({ jobs: [{ jobId: job, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 5n }], settle: { requestId, chargeMicros: 9n, credits: 1, images: 1 } });
    assert.equal(out.settlement.settled, false);
    const row = await mine.getRequest(requestId);
    assert.deepEqual([row?.status, row?.chargeMicros, row?.leaseId], ['reserved', 0n, 'lease-b']);
    // The job is a fact from fal whoever owns the request: recorded, with the request's cost, uncharged.
    assert.deepEqual([row?.jobs[0]?.status, row?.upstreamCostMicros], ['completed', 5n]);
  });

  it('refuses a label the key already used, and writes no job row for it', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const first = uid('req');
    const second = uid('req');
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 1n, first), clientRequestId: 'label', jobs: 1 }), { ok: true });
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 1n, second), clientRequestId: 'label', jobs: 1 }), { ok: false, reason: 'request_id_taken' });
    assert.equal(await ledger.getRequest(second), null);
  });
});
