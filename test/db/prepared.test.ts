import assert from 'node:assert/strict';
import { it } from 'node:test';
import { sql, type Kysely, type KyselyPlugin } from 'kysely';
import { prepared } from '../../src/db/prepared.js';
import type { DB } from '../../src/db/schema.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { describeEachDialect, type DialectContext } from '../helpers/databases.js';

describeEachDialect('prepared queries', (ctx: DialectContext) => {
  it('compile once and run with each call\'s values, inline constants kept, in and out of transactions', async () => {
    const database = await ctx.open();
    const keys = createKeysStore(database);
    const a = (await keys.create({ name: 'a', budgetMicros: null })).record.id;
    const b = (await keys.create({ name: 'b', budgetMicros: null })).record.id;
    let builds = 0;
    const add = prepared((q: Kysely<DB>, p: { id: string; amount: bigint }) => {
      builds++;
      return q
        .updateTable('api_keys')
        .set({ spent_micros: sql<bigint>`spent_micros + ${p.amount}` })
        .where('id', '=', p.id)
        .where('name', 'in', ['a', 'b'])
        .returning(['id', 'spent_micros']);
    });
    const first = await add.run(database.db, { id: a, amount: 5n });
    const second = await add.run(database.db, { id: b, amount: 7n });
    const inTrx = await database.db.transaction().execute((trx) => add.run(trx, { id: a, amount: 2n ** 60n }));
    assert.equal(builds, 1);
    assert.deepEqual(first.rows.map((r) => [r.id, BigInt(r.spent_micros)]), [[a, 5n]]);
    assert.deepEqual(second.rows.map((r) => [r.id, BigInt(r.spent_micros)]), [[b, 7n]]);
    assert.deepEqual(inTrx.rows.map((r) => [r.id, BigInt(r.spent_micros)]), [[a, 2n ** 60n + 5n]]);
    // The inline constant list still filters: a key named otherwise is not matched.
    const c = (await keys.create({ name: 'c', budgetMicros: null })).record.id;
    assert.deepEqual((await add.run(database.db, { id: c, amount: 1n })).rows, []);
  });

  it('refuses a run that lacks a value the query uses', async () => {
    const database = await ctx.open();
    const q = prepared((db: Kysely<DB>, p: { id: string }) => db.selectFrom('api_keys').select('id').where('id', '=', p.id));
    await assert.rejects(q.run(database.db, {} as { id: string }), /not given: id/);
  });
});

/**
 * The saving src/db/prepared.ts exists for: the ledger's per-request writes
 * (reserve, recordSubmit, settleJobs) run compiled statements and build no
 * query per call. A Kysely plugin sees every query that is built and
 * compiled, and none that is only executed.
 */
describeEachDialect('the ledger\'s per-request writes', (ctx: DialectContext) => {
  it('compile no query once their statements are prepared', async () => {
    const base = await ctx.open();
    let compiled = 0;
    const counter: KyselyPlugin = {
      transformQuery(args) {
        compiled++;
        return args.node;
      },
      transformResult: (args) => Promise.resolve(args.result),
    };
    const ledger = createLedger({ ...base, db: base.db.withPlugin(counter), writes: base.writes?.withPlugin(counter) });
    const keyId = (await createKeysStore(base).create({ name: 'p', budgetMicros: null })).record.id;
    const lifecycle = async (n: number) => {
      const requestId = `req-prepared-${n}`;
      const falRequestId = `fal-prepared-${n}`;
      assert.deepEqual(await ledger.reserve({ requestId, keyId, model: 'm', endpoint: 'e', maxChargeMicros: 10n, jobs: 1 }), { ok: true });
      await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId });
      const done = await ledger.settleJobs({
        jobs: [{ jobId: jobIdFor(requestId, 0), images: 1, pixels: 1, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5n }],
        settle: { requestId, chargeMicros: 10n, credits: 20n, images: 1 },
      });
      assert.equal(done.settlement.settled, true);
    };
    await lifecycle(1);
    assert.ok(compiled > 0, 'the first request compiles the statements (the counter sees them)');
    compiled = 0;
    await lifecycle(2);
    await lifecycle(3);
    assert.equal(compiled, 0, 'a query was built and compiled on the per-request path');
  });
});
