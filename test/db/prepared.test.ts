import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import { prepared } from '../../src/db/prepared.js';
import type { DB } from '../../src/db/schema.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
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
