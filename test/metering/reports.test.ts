import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SelectQueryNode, type KyselyPlugin } from 'kysely';
import { createLedger, jobIdFor, strayIdFor } from '../../src/metering/ledger.js';
import { createReports, type Reports } from '../../src/metering/reports.js';
import { describeEachDialect, type DialectContext } from '../helpers/databases.js';
import { BEYOND_2_53, keyWithBudget, manualClock, reserveInput } from '../helpers/ledger.js';

describeEachDialect('reports', (ctx: DialectContext) => {
  const { fresh } = ctx;

  describe('usage', () => {
    async function seeded(): Promise<{ reports: Reports; keyA: string; keyB: string }> {
      const storage = await fresh();
      const database = await storage.open();
      const time = manualClock('2025-01-01T00:00:00.000Z');
      const ledger = createLedger(database, { clock: time.clock });
      const keyA = await keyWithBudget(database, null);
      const keyB = await keyWithBudget(database, null);
      const rows: Array<[string, string, string, bigint, number]> = [
        // settled at,               key,  model,  charge,               images
        ['2025-01-01T23:59:59.999Z', keyA, 'm-1', 100n, 1],
        ['2025-01-02T00:00:00.000Z', keyA, 'm-2', 200n, 2],
        ['2025-01-02T12:00:00.000Z', keyB, 'm-1', BEYOND_2_53, 3],
        ['2025-01-03T00:00:00.000Z', keyB, 'm-2', 400n, 4],
      ];
      let n = 0;
      for (const [at, keyId, model, charge, images] of rows) {
        const requestId = `u-${n++}`;
        time.set('2025-01-01T00:00:00.000Z');
        await ledger.reserve({ ...reserveInput(keyId, charge, requestId), model, jobs: 1 });
        time.set(at);
        await ledger.settleJobs({
          jobs: [{ jobId: jobIdFor(requestId, 0), images, pixels: images, unitsEstimate: '1', upstreamCostMicros: charge / 2n }],
          settle: { requestId, chargeMicros: charge, credits: charge * 2n, images },
        });
      }
      // Neither an open nor a released request counts.
      await ledger.reserve({ ...reserveInput(keyA, 999n, 'u-open'), model: 'm-1' });
      await ledger.reserve({ ...reserveInput(keyA, 999n, 'u-released'), model: 'm-1' });
      time.set('2025-01-02T01:00:00.000Z');
      await ledger.release({ requestId: 'u-released', status: 'released' });
      return { reports: createReports(database), keyA, keyB };
    }

    it('groups settled requests by UTC day, model and key, with totals', async () => {
      const { reports, keyA, keyB } = await seeded();
      const byDay = await reports.usage({ groupBy: 'day' });
      assert.deepEqual(
        byDay.rows.map((r) => [r.group, r.requests, r.images, r.chargeMicros]),
        [
          ['2025-01-01', 1, 1, 100n],
          ['2025-01-02', 2, 5, 200n + BEYOND_2_53],
          ['2025-01-03', 1, 4, 400n],
        ],
      );
      const total = 700n + BEYOND_2_53;
      assert.deepEqual(byDay.totals, {
        requests: 4,
        images: 10,
        chargeMicros: total,
        credits: total * 2n,
        upstreamCostMicros: 50n + 100n + BEYOND_2_53 / 2n + 200n,
      });
      const byModel = await reports.usage({ groupBy: 'model' });
      assert.deepEqual(byModel.rows.map((r) => [r.group, r.requests, r.chargeMicros]), [
        ['m-1', 2, 100n + BEYOND_2_53],
        ['m-2', 2, 600n],
      ]);
      const byKey = await reports.usage({ groupBy: 'key' });
      assert.deepEqual(
        byKey.rows.map((r) => [r.group, r.chargeMicros]),
        [
          [keyA, 300n],
          [keyB, 400n + BEYOND_2_53],
        ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
      );
      assert.deepEqual((await reports.usage()).totals, byDay.totals);
      assert.deepEqual((await reports.usage()).rows, []);
    });

    it('treats from as inclusive and to as exclusive, in UTC whatever the offset given', async () => {
      const { reports, keyB } = await seeded();
      const day2 = await reports.usage({ from: '2025-01-02T00:00:00.000Z', to: '2025-01-03T00:00:00.000Z', groupBy: 'day' });
      assert.deepEqual(day2.rows.map((r) => [r.group, r.requests]), [['2025-01-02', 2]]);
      const sameWithOffset = await reports.usage({ from: '2025-01-02T01:00:00+01:00', to: new Date('2025-01-03T00:00:00Z') });
      assert.deepEqual(sameWithOffset.totals, day2.totals);
      const justAfter = await reports.usage({ from: '2025-01-02T00:00:00.001Z', to: '2025-01-03T00:00:00.001Z' });
      assert.equal(justAfter.totals.requests, 2);
      assert.equal(justAfter.totals.chargeMicros, BEYOND_2_53 + 400n);
      const filtered = await reports.usage({ keyId: keyB, model: 'm-2' });
      assert.deepEqual([filtered.totals.requests, filtered.totals.chargeMicros], [1, 400n]);
      const empty = await reports.usage({ from: '2030-01-01T00:00:00Z', groupBy: 'model' });
      assert.deepEqual(empty, { rows: [], totals: { requests: 0, images: 0, chargeMicros: 0n, credits: 0n, upstreamCostMicros: 0n } });
    });

    it('exports settled rows in order, fetched in keyset batches', async () => {
      const { reports } = await seeded();
      const all = [];
      for await (const row of reports.exportRows({ batchSize: 3 })) all.push(row);
      assert.deepEqual(all.map((r) => r.request_id), ['u-0', 'u-1', 'u-2', 'u-3']);
      assert.deepEqual(all[2], {
        request_id: 'u-2',
        client_request_id: null,
        key_id: all[2]!.key_id,
        model: 'm-1',
        endpoint: 'fal-ai/z-image/turbo',
        user: 'u-1',
        images: 3,
        charge_micros: BEYOND_2_53,
        credits: BEYOND_2_53 * 2n,
        upstream_cost_micros: BEYOND_2_53 / 2n,
        created_at: '2025-01-01T00:00:00.000Z',
        settled_at: '2025-01-02T12:00:00.000Z',
      });
      const window = [];
      for await (const row of reports.exportRows({ from: '2025-01-02T00:00:00Z', to: '2025-01-03T00:00:00Z', batchSize: 1 })) {
        window.push(row.request_id);
      }
      assert.deepEqual(window, ['u-1', 'u-2']);
    });
  });

  it('export reads one batch per query and stops when the consumer does', async () => {
    const storage = await fresh();
    const base = await storage.open();
    let selects = 0;
    const counter: KyselyPlugin = {
      transformQuery(args) {
        if (SelectQueryNode.is(args.node)) selects++;
        return args.node;
      },
      transformResult: (args) => Promise.resolve(args.result),
    };
    const ledger = createLedger(base, { clock: () => new Date('2025-02-01T00:00:00.000Z') });
    const reports = createReports({ ...base, db: base.db.withPlugin(counter) });
    const keyId = await keyWithBudget(base, null);
    // Same settled_at for every row: the keyset must break ties by id.
    for (let i = 0; i < 5; i++) {
      await ledger.reserve(reserveInput(keyId, 1n, `e-${i}`));
      await ledger.settle({ requestId: `e-${i}`, chargeMicros: 1n, credits: 1, images: 1 });
    }
    selects = 0;
    const ids = [];
    for await (const row of reports.exportRows({ batchSize: 2 })) ids.push(row.request_id);
    assert.deepEqual(ids, ['e-0', 'e-1', 'e-2', 'e-3', 'e-4']);
    assert.equal(selects, 3);

    selects = 0;
    for await (const row of reports.exportRows({ batchSize: 2 })) {
      assert.equal(row.request_id, 'e-0');
      break;
    }
    assert.equal(selects, 1);
  });

  describe('unrecovered', () => {
    it('counts every billed job no caller pays for, by model, and nothing a settled request charged', async () => {
      const storage = await fresh();
      const database = await storage.open();
      const time = manualClock('2025-02-01T00:00:00.000Z');
      const ledger = createLedger(database, { clock: time.clock });
      const key = await keyWithBudget(database, null);
      const job = (requestId: string, i: number, cost: bigint) => ({ jobId: jobIdFor(requestId, i), images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: cost });
      // Charged: recovered.
      await ledger.reserve({ ...reserveInput(key, 100n, 'paid'), model: 'm-1', jobs: 2 });
      await ledger.closeJob({ jobId: jobIdFor('paid', 1), status: 'failed', upstreamCostMicros: 7n });
      await ledger.settleJobs({ jobs: [job('paid', 0, 50n)], settle: { requestId: 'paid', chargeMicros: 60n, credits: 1, images: 1 } });
      // Answered with an error: its completed job's cost is unrecovered.
      await ledger.reserve({ ...reserveInput(key, 100n, 'refused'), model: 'm-2', jobs: 1 });
      time.set('2025-02-02T00:00:00.000Z');
      await ledger.release({ requestId: 'refused', status: 'failed', errorCode: 'upstream_media_error', jobs: [job('refused', 0, 30n)] });
      // A stray fal made and billed.
      await ledger.recordStrays({ requestId: 'paid', endpoint: 'e', falRequestIds: ['fal-stray'] });
      await ledger.completeJob({ jobId: strayIdFor('paid', 'fal-stray'), images: 1, pixels: 1, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 11n });

      const reports = createReports(database);
      const all = await reports.unrecovered();
      // The refused request's job came without fal's units: its cost is our estimate, and said to be one.
      assert.deepEqual(all, { totalMicros: 48n, estimatedMicros: 30n, jobs: 3, byModel: [{ model: 'm-1', micros: 18n, estimatedMicros: 0n, jobs: 2 }, { model: 'm-2', micros: 30n, estimatedMicros: 30n, jobs: 1 }] });
      assert.equal((await reports.unrecovered({ model: 'm-2' })).totalMicros, 30n);
      assert.equal((await reports.unrecovered({ from: '2025-02-02T00:00:00.000Z' })).totalMicros, 41n, 'by when each job ended');
      assert.equal((await ledger.getRequest('paid'))?.upstreamCostMicros, 68n, 'a request’s upstream cost is all its jobs’, strays included');
    });
  });
});
