import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLedger, jobIdFor, strayIdFor, UnknownKeyError, UnknownRequestError } from '../../src/metering/ledger.js';
import { createReports } from '../../src/metering/reports.js';
import { createOutboxStore } from '../../src/metering/outbox-store.js';
import { describeEachDialect, runInProcesses, type DialectContext } from '../helpers/databases.js';
import { BEYOND_2_53, keyWithBudget, manualClock, reserveInput, uid } from '../helpers/ledger.js';

async function keyState(database: Database, id: string): Promise<{ spent: bigint; reserved: bigint }> {
  const key = await createKeysStore(database).get(id);
  assert.ok(key);
  return { spent: key.spentMicros, reserved: key.reservedMicros };
}

describeEachDialect('ledger', (ctx: DialectContext) => {
  const { dialect, open, fresh } = ctx;

  describe('reserve and settle', () => {
    it('moves exact amounts above 2^53 between reserved and spent', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 2n ** 62n);
      const requestId = uid('req');
      assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, BEYOND_2_53 * 2n, requestId), jobs: 1 }), { ok: true });
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: BEYOND_2_53 * 2n });

      const charge = BEYOND_2_53 + 2n;
      const { settled, request } = (
        await ledger.settleJobs({
          jobs: [{ jobId: jobIdFor(requestId, 0), images: 2, pixels: 2, unitsEstimate: '2', upstreamCostMicros: BEYOND_2_53 }],
          settle: { requestId, chargeMicros: charge, credits: BEYOND_2_53 * 3n, images: 2 },
        })
      ).settlement;
      assert.equal(settled, true);
      assert.equal(request.status, 'settled');
      assert.equal(request.chargeMicros, charge);
      assert.equal(request.credits, BEYOND_2_53 * 3n);
      assert.equal(request.upstreamCostMicros, BEYOND_2_53);
      assert.equal(request.reservedMicros, BEYOND_2_53 * 2n);
      assert.equal(request.images, 2);
      assert.equal(request.user, 'u-1');
      assert.ok(request.settledAt);
      assert.deepEqual(await keyState(database, keyId), { spent: charge, reserved: 0n });
    });

    it('refuses a reservation that would pass the budget, and allows one that lands on it exactly', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 100n);
      const first = uid('req');
      assert.equal((await ledger.reserve(reserveInput(keyId, 60n, first))).ok, true);
      const refusedId = uid('req');
      assert.deepEqual(await ledger.reserve(reserveInput(keyId, 50n, refusedId)), {
        ok: false,
        reason: 'insufficient_quota',
        budgetMicros: 100n,
        spentMicros: 0n,
        reservedMicros: 60n,
      });
      // A refusal commits nothing: no request row, no hold, and the id stays free.
      assert.equal(await ledger.getRequest(refusedId), null);
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: 60n });
      await ledger.settle({ requestId: first, chargeMicros: 30n, credits: 60, images: 1 });
      assert.equal((await ledger.reserve(reserveInput(keyId, 70n))).ok, true);
      const refused = await ledger.reserve(reserveInput(keyId, 1n));
      assert.deepEqual(refused, { ok: false, reason: 'insufficient_quota', budgetMicros: 100n, spentMicros: 30n, reservedMicros: 70n });
      assert.deepEqual(await ledger.reserve(reserveInput(keyId, 0n, refusedId)), { ok: true });
    });

    it('refuses nothing for a key without a budget, and throws for a key with no row', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keys = createKeysStore(database);
      const staticKey = await keys.ensureStatic('sk-static-for-ledger-' + dialect);
      assert.equal((await ledger.reserve(reserveInput(staticKey.id, 2n ** 62n))).ok, true);
      await assert.rejects(ledger.reserve(reserveInput('no-such-key', 1n)), UnknownKeyError);
    });

    it("refuses a label (x-request-id) the key already used and rolls its hold back; another key's same label is its own", async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const otherKey = await keyWithBudget(database, 1000n);
      const label = uid('trace');
      const first = uid('req');
      assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 100n, first), clientRequestId: label }), { ok: true });
      assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 100n), clientRequestId: label }), { ok: false, reason: 'request_id_taken' });
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: 100n });
      const other = uid('req');
      assert.deepEqual(await ledger.reserve({ ...reserveInput(otherKey, 100n, other), clientRequestId: label }), { ok: true });
      assert.equal((await ledger.getRequestByClientId(keyId, label))?.id, first);
      assert.equal((await ledger.getRequestByClientId(otherKey, label))?.id, other);
      assert.equal((await ledger.getRequest(other))?.clientRequestId, label);
    });

    it('never takes our own id twice: that conflict is an error, not a reused label', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 100n, requestId));
      await assert.rejects(ledger.reserve({ ...reserveInput(keyId, 100n, requestId), clientRequestId: uid('trace') }));
      await assert.rejects(ledger.reserve(reserveInput(keyId, 100n, requestId)));
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: 100n });
    });

    it('settles once: a repeat changes nothing and returns the first settlement', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const outbox = createOutboxStore(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 100n, requestId));
      const event = { eventId: `evt_${requestId}`, type: 'usage.settled', payload: { requestId, charge: 40n } };
      const first = await ledger.settle({ requestId, chargeMicros: 40n, credits: 80, images: 1, outboxEvent: event });
      const second = await ledger.settle({ requestId, chargeMicros: 99n, credits: 1, images: 4, outboxEvent: event });
      assert.equal(first.settled, true);
      assert.equal(second.settled, false);
      assert.deepEqual(second.request, first.request);
      assert.deepEqual(await keyState(database, keyId), { spent: 40n, reserved: 0n });
      const stored = await outbox.get(event.eventId);
      assert.equal(stored?.keyId, keyId);
      assert.deepEqual(stored?.payload, { requestId, charge: '40' });
    });

    it('settles once when two connections settle the same request at the same time', async () => {
      const storage = await ctx.storage();
      const databases = await Promise.all([storage.open(), storage.open(), storage.open()]);
      const ledgers = databases.map((d) => createLedger(d));
      const keyId = await keyWithBudget(databases[0]!, 10_000n);
      for (let round = 0; round < 5; round++) {
        const requestId = uid('req');
        await ledgers[0]!.reserve(reserveInput(keyId, 100n, requestId));
        const results = await Promise.all(
          ledgers.map((l, i) =>
            l.settle({
              requestId,
              chargeMicros: 70n,
              credits: 1,
              images: 1,
              outboxEvent: { eventId: `evt_${requestId}`, type: 't', payload: { i } },
            }),
          ),
        );
        assert.equal(results.filter((r) => r.settled).length, 1);
      }
      assert.deepEqual(await keyState(databases[0]!, keyId), { spent: 350n, reserved: 0n });
      const events = await databases[0]!.db.selectFrom('outbox').select('event_id').where('key_id', '=', keyId).execute();
      assert.equal(events.length, 5);
    });

    it('throws for a request it never saw', async () => {
      const ledger = createLedger(await open());
      await assert.rejects(ledger.settle({ requestId: 'nope', chargeMicros: 1n, credits: 1, images: 1 }), UnknownRequestError);
      await assert.rejects(ledger.release({ requestId: 'nope', status: 'failed' }), UnknownRequestError);
      await assert.rejects(ledger.markOrphaned('nope'), UnknownRequestError);
      assert.equal(await ledger.getRequest('nope'), null);
    });
  });

  describe('release', () => {
    it('returns the hold without charging, once', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 300n, requestId));
      const first = await ledger.release({ requestId, status: 'failed', errorCode: 'job_failed_500' });
      const again = await ledger.release({ requestId, status: 'released', errorCode: 'other' });
      assert.equal(first.released, true);
      assert.equal(again.released, false);
      assert.equal(again.request.status, 'failed');
      assert.equal(again.request.errorCode, 'job_failed_500');
      assert.equal(again.request.chargeMicros, 0n);
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: 0n });
    });

    it('neither releases a settled request nor settles a released one', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const settledId = uid('req');
      const releasedId = uid('req');
      await ledger.reserve(reserveInput(keyId, 100n, settledId));
      await ledger.reserve(reserveInput(keyId, 100n, releasedId));
      await ledger.settle({ requestId: settledId, chargeMicros: 50n, credits: 1, images: 1 });
      await ledger.release({ requestId: releasedId, status: 'released', errorCode: 'client_gone' });
      assert.equal((await ledger.release({ requestId: settledId, status: 'failed' })).released, false);
      const late = await ledger.settle({ requestId: releasedId, chargeMicros: 50n, credits: 1, images: 1 });
      assert.equal(late.settled, false);
      assert.equal(late.request.status, 'released');
      assert.deepEqual(await keyState(database, keyId), { spent: 50n, reserved: 0n });
    });
  });

  describe('budget race', () => {
    it('20 overlapping reserves from several connections: exactly floor(budget / X) succeed', async () => {
      const storage = await ctx.storage();
      const databases = await Promise.all(Array.from({ length: 4 }, () => storage.open()));
      const ledgers = databases.map((d) => createLedger(d));
      const amount = 1_000_003n;
      const budget = amount * 7n + amount / 2n;
      const keyId = await keyWithBudget(databases[0]!, budget);
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => ledgers[i % ledgers.length]!.reserve(reserveInput(keyId, amount))),
      );
      assert.equal(results.filter((r) => r.ok).length, 7);
      const { reserved } = await keyState(databases[0]!, keyId);
      assert.equal(reserved, amount * 7n);
      assert.ok(reserved <= budget);
    });

    it('overlapping reserves from two processes: exactly floor(budget / X) succeed', async () => {
      const storage = await ctx.storage();
      const database = await storage.open();
      const amount = 2n ** 53n + 7n;
      const budget = amount * 10n + 5n;
      const keyId = await keyWithBudget(database, budget);
      const prefix = uid('proc');
      const results = await runInProcesses<{ ok: number; refused: number }>(
        storage,
        [0, 1].map((p) => ({ kind: 'reserve', keyId, amountMicros: amount.toString(), count: 8, requestIdPrefix: `${prefix}-${p}` })),
      );
      assert.equal(results.reduce((n, r) => n + r.ok, 0), 10);
      assert.equal(results.reduce((n, r) => n + r.refused, 0), 6);
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: amount * 10n });
    });
  });

  describe('jobs given up as lost', () => {
    it('lists those fal named, given up since a time, in the order given up, one page after another', async () => {
      const database = await (await fresh()).open();
      const time = manualClock('2026-01-01T00:00:00.000Z');
      const ledger = createLedger(database, { clock: time.clock });
      const keyId = await keyWithBudget(database, null);
      const jobs: string[] = [];
      for (const [i, fal] of ['fal-1', 'fal-2', null, 'fal-4', 'fal-5'].entries()) {
        const requestId = uid('req');
        await ledger.reserve({ ...reserveInput(keyId, 10n, requestId), jobs: 1 });
        const jobId = jobIdFor(requestId, 0);
        if (fal) await ledger.recordSubmit({ jobId, falRequestId: uid(fal) });
        time.set(`2026-01-01T00:0${i + 1}:00.000Z`);
        await ledger.closeJob({ jobId, status: i === 4 ? 'failed' : 'lost', upstreamCostMicros: 1n, costEstimated: true });
        jobs.push(jobId);
      }
      const [j1, j2, , j4] = jobs;
      const page1 = await ledger.listLostJobs({ since: '2026-01-01T00:00:00.000Z', limit: 2 });
      assert.deepEqual(page1.map((j) => j.id), [j1, j2], 'in the order given up; the job fal never named is left out');
      const last = page1.at(-1)!;
      const page2 = await ledger.listLostJobs({ since: '2026-01-01T00:00:00.000Z', after: { at: last.completedAt!, id: last.id }, limit: 2 });
      assert.deepEqual(page2.map((j) => j.id), [j4], 'the failed job is not lost');
      assert.deepEqual((await ledger.listLostJobs({ since: '2026-01-01T00:02:00.000Z', limit: 5 })).map((j) => j.id), [j2, j4]);
      assert.deepEqual(await ledger.listLostJobs({ since: '2026-01-01T00:05:00.000Z', limit: 5 }), []);
    });

    it("completes a lost job at fal's word still marked given up, so its settled request's charge never covers it", async () => {
      const database = await (await fresh()).open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 100n, requestId), model: 'm-late', jobs: 2 });
      const [lost, paid] = [jobIdFor(requestId, 0), jobIdFor(requestId, 1)];
      await ledger.closeJob({ jobId: lost, status: 'lost', upstreamCostMicros: 4n, costEstimated: true, errorCode: 'gave_up' });
      await ledger.settleJobs({ jobs: [{ jobId: paid, images: 1, pixels: 1, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5n }], settle: { requestId, chargeMicros: 9n, credits: 1, images: 1 } });
      const late = { jobId: lost, images: 1, pixels: 1, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 6n };
      assert.equal((await ledger.completeLostJob({ ...late, jobId: paid })).changed, false, 'only a lost job');
      const out = await ledger.completeLostJob(late);
      assert.deepEqual([out.changed, out.job.status, out.job.upstreamCostMicros, out.job.costEstimated, out.job.errorCode], [true, 'completed', 6n, false, 'gave_up']);
      assert.equal((await ledger.completeLostJob(late)).changed, false, 'recorded once');
      const row = await ledger.getRequest(requestId);
      assert.deepEqual([row?.status, row?.chargeMicros, row?.images, row?.upstreamCostMicros], ['settled', 9n, 1, 11n]);
      const unrecovered = await createReports(database).unrecovered({ keyId });
      assert.deepEqual([unrecovered.totalMicros, unrecovered.jobs], [6n, 1], 'no caller paid for the late one');
    });
  });

  describe('upstream jobs', () => {
    it('writes every job’s row with the reservation, adds fal’s id once, and refuses another id for the same job', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 10n, requestId), jobs: 2 });
      const before = await ledger.getRequest(requestId);
      assert.deepEqual(before?.jobs.map((j) => [j.id, j.status, j.falRequestId]), [
        [jobIdFor(requestId, 0), 'submitting', null],
        [jobIdFor(requestId, 1), 'submitting', null],
      ]);
      const falA = uid('fal');
      const falB = uid('fal');
      const first = await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: falA });
      const repeat = await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: falA });
      assert.deepEqual(repeat, first);
      await assert.rejects(ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: falB }), /already has fal request/);
      await ledger.recordSubmit({ jobId: jobIdFor(requestId, 1), falRequestId: falB });
      const request = await ledger.getRequest(requestId);
      assert.equal(request?.status, 'reserved', 'the request holds its reservation; what reached fal is its jobs');
      assert.deepEqual(request?.jobs.map((j) => j.falRequestId).sort(), [falA, falB].sort());
      assert.ok(request?.jobs.every((j) => j.status === 'submitted' && j.kind === 'job'));
    });

    it('a refused reservation writes no job rows', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 5n);
      const requestId = uid('req');
      assert.equal((await ledger.reserve({ ...reserveInput(keyId, 10n, requestId), jobs: 3 })).ok, false);
      const rows = await database.db.selectFrom('upstream_jobs').select('id').where('request_id', '=', requestId).execute();
      assert.deepEqual(rows, []);
    });

    it('completes a job once, comparing units as decimals, and counts disagreements', async () => {
      const storage = await fresh();
      const database = await storage.open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 10n, requestId), jobs: 3 });
      const [same, differs, noHeader] = [0, 1, 2].map((i) => jobIdFor(requestId, i));
      for (const id of [same, differs, noHeader]) await ledger.recordSubmit({ jobId: id!, falRequestId: uid('fal') });

      const a = await ledger.completeJob({ jobId: same!, images: 1, pixels: 1024 * 768, unitsEstimate: '1.0', unitsFal: '1', upstreamCostMicros: 5000n });
      assert.deepEqual([a.changed, a.unitsMismatch, a.job.status, a.job.unitsEstimate, a.job.unitsFal], [true, false, 'completed', '1', '1']);
      const b = await ledger.completeJob({ jobId: differs!, otherFalId: 'fal-retry', images: 2, pixels: 2_097_152, unitsEstimate: '2.097152', unitsFal: '3', upstreamCostMicros: 15_000n });
      assert.equal(b.unitsMismatch, true);
      assert.deepEqual(b.job.otherFalIds, ['fal-retry'], 'the runner retry’s id is kept beside the one submit answered');
      const c = await ledger.completeJob({ jobId: noHeader!, images: 1, pixels: 1, unitsEstimate: 1, unitsFal: null, upstreamCostMicros: 1n });
      assert.equal(c.unitsMismatch, false);

      const repeat = await ledger.completeJob({ jobId: same!, images: 9, pixels: 9, unitsEstimate: '9', unitsFal: '9', upstreamCostMicros: 9n });
      assert.equal(repeat.changed, false);
      assert.equal(repeat.job.upstreamCostMicros, 5000n);
      assert.equal((await ledger.closeJob({ jobId: same!, status: 'failed', upstreamCostMicros: 0n })).changed, false, 'a completed job stays completed');

      const disagreements = await createReports(database).unitsDisagreements();
      assert.equal(disagreements.count, 1);
      assert.deepEqual(disagreements.jobs.map((j) => [j.id, j.unitsEstimate, j.unitsFal]), [[differs, '2.097152', '3']]);
    });

    it('closes a failed job at what fal billed, lets a completion override an earlier cancel, and records strays without changing the request', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 10n, requestId), jobs: 2 });
      const [j0, j1] = [jobIdFor(requestId, 0), jobIdFor(requestId, 1)];
      await ledger.recordSubmit({ jobId: j0, falRequestId: uid('fal') });
      await ledger.recordSubmit({ jobId: j1, falRequestId: uid('fal') });
      const failed = await ledger.closeJob({ jobId: j1, status: 'failed', upstreamCostMicros: 5000n, unitsFal: '1.0', errorCode: 'content_policy_violation' });
      assert.deepEqual([failed.changed, failed.job.status, failed.job.upstreamCostMicros, failed.job.unitsFal, failed.job.errorCode], [true, 'failed', 5000n, '1', 'content_policy_violation']);
      assert.equal((await ledger.closeJob({ jobId: j0, status: 'cancelled', upstreamCostMicros: 0n })).job.status, 'cancelled');
      assert.equal((await ledger.completeJob({ jobId: j0, images: 1, pixels: 4, unitsEstimate: '1', upstreamCostMicros: 3n })).job.status, 'completed');
      await assert.rejects(ledger.closeJob({ jobId: j0, status: 'lost', upstreamCostMicros: -1n }), RangeError);

      const stray = uid('fal');
      await ledger.recordStrays({ requestId, endpoint: 'e', falRequestIds: [stray] });
      await ledger.recordStrays({ requestId, endpoint: 'e', falRequestIds: [stray] });
      const row = await ledger.getRequest(requestId);
      const strays = row!.jobs.filter((j) => j.kind === 'stray');
      assert.deepEqual(strays.map((j) => [j.id, j.falRequestId, j.status]), [[strayIdFor(requestId, stray), stray, 'submitted']]);
      assert.deepEqual((await ledger.listOpenJobs()).filter((j) => j.requestId === requestId).map((j) => j.id), [strayIdFor(requestId, stray)], 'the stray is open until reconciliation learns its cost');
      const completedStray = await ledger.completeJob({ jobId: strayIdFor(requestId, stray), images: 1, pixels: 4, unitsEstimate: '1', upstreamCostMicros: 3n });
      assert.deepEqual([completedStray.changed, completedStray.job.kind, completedStray.job.upstreamCostMicros], [true, 'stray', 3n]);
      assert.equal(row?.status, 'reserved');
    });
  });

  describe('settleJobs', () => {
    it('completes every job and settles the request in one transaction, and a repeat changes nothing', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 2 });
      const [one, two] = [jobIdFor(requestId, 0), jobIdFor(requestId, 1)];
      const jobs = [
        { jobId: one, images: 4, pixels: 4 * 1024 * 1024, unitsEstimate: '4.194304', unitsFal: '4.194304', upstreamCostMicros: 21_000n },
        { jobId: two, images: 1, pixels: 1024 * 1024, unitsEstimate: '1.048576', unitsFal: '2', upstreamCostMicros: 5_000n },
      ];
      const settle = { requestId, chargeMicros: 30n, credits: 60, images: 5 };
      const out = await ledger.settleJobs({ jobs, settle });
      assert.deepEqual(out.jobs.map((j) => [j.job.id, j.job.status, j.changed, j.unitsMismatch, j.job.images]), [
        [one, 'completed', true, false, 4],
        [two, 'completed', true, true, 1],
      ]);
      assert.deepEqual([out.settlement.settled, out.settlement.request.status, out.settlement.request.chargeMicros, out.settlement.request.images], [true, 'settled', 30n, 5]);
      assert.deepEqual(await keyState(database, keyId), { spent: 30n, reserved: 0n });

      const again = await ledger.settleJobs({ jobs, settle: { ...settle, chargeMicros: 99n } });
      assert.deepEqual([again.jobs.every((j) => !j.changed), again.settlement.settled, again.settlement.request.chargeMicros], [true, false, 30n]);
      assert.deepEqual(await keyState(database, keyId), { spent: 30n, reserved: 0n });
    });

    it('rolls the jobs back when the settlement cannot be written', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 1 });
      const fal = jobIdFor(requestId, 0);
      await ledger.recordSubmit({ jobId: fal, falRequestId: uid('fal') });
      await assert.rejects(
        ledger.settleJobs({
          jobs: [{ jobId: fal, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 1n }],
          settle: { requestId, chargeMicros: -1n, credits: 0, images: 1 },
        }),
        RangeError,
      );
      const row = await ledger.getRequest(requestId);
      assert.deepEqual([row?.status, row?.jobs.map((j) => [j.status, j.completedAt])], ['reserved', [['submitted', null]]]);
    });
  });

  describe('open and orphaned requests', () => {
    it('lists open requests with their jobs, and orphans separately with their hold returned', async () => {
      const storage = await fresh();
      const database = await storage.open();
      const time = manualClock('2025-05-01T10:00:00.000Z');
      const ledger = createLedger(database, { clock: time.clock });
      const keyId = await keyWithBudget(database, 1000n);
      const [reserved, submitted, orphan, settled] = ['a-reserved', 'b-submitted', 'c-orphan', 'd-settled'];
      for (const id of [reserved, submitted, orphan, settled]) {
        await ledger.reserve({ ...reserveInput(keyId, 100n, id), jobs: id === submitted ? 1 : 0 });
        time.set('2025-05-01T10:00:01.000Z');
      }
      await ledger.recordSubmit({ jobId: jobIdFor(submitted, 0), falRequestId: 'fal-b' });
      await ledger.settle({ requestId: settled, chargeMicros: 10n, credits: 1, images: 1 });
      assert.equal(await ledger.markOrphaned(orphan), true);
      assert.equal(await ledger.markOrphaned(orphan), false);
      assert.equal(await ledger.markOrphaned(settled), false);

      const open = await ledger.listOpen();
      assert.deepEqual(open.map((r) => [r.id, r.status, r.jobs.map((j) => j.falRequestId)]), [
        [reserved, 'reserved', []],
        [submitted, 'reserved', ['fal-b']],
      ]);
      assert.deepEqual((await ledger.listOpen({ createdBefore: '2025-05-01T10:00:01.000Z' })).map((r) => r.id), [reserved]);
      assert.deepEqual((await ledger.listOrphaned()).map((r) => [r.id, r.status]), [[orphan, 'orphaned']]);
      assert.deepEqual(await keyState(database, keyId), { spent: 10n, reserved: 200n });

      // Reconciliation found the orphan's job after all: it is charged, its hold having gone already.
      const late = await ledger.settle({ requestId: orphan, chargeMicros: 60n, credits: 1, images: 1 });
      assert.equal(late.settled, true);
      assert.deepEqual(await keyState(database, keyId), { spent: 70n, reserved: 200n });
      assert.equal((await ledger.listOrphaned()).length, 0);
    });
  });
});
