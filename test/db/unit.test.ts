import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Kysely } from 'kysely';
import type { DB } from '../../src/db/schema.js';
import { runUnit, type Unit } from '../../src/db/unit.js';
import type { Database } from '../../src/db/database.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { describeEachDialect, type DialectContext } from '../helpers/databases.js';

/** Adds `amount` to a key's spent_micros and answers the new value, in `steps` statements. */
function* addSpent(db: Kysely<DB>, id: string, amount: bigint, steps = 1): Unit<bigint> {
  let spent = 0n;
  for (let i = 0; i < steps; i++) {
    const r = yield db
      .updateTable('api_keys')
      .set((eb) => ({ spent_micros: eb('spent_micros', '+', amount) }))
      .where('id', '=', id)
      .returning('spent_micros')
      .compile();
    spent = BigInt(r.rows[0].spent_micros);
  }
  return spent;
}

async function spentOf(database: Database, id: string): Promise<bigint> {
  const row = await database.db.selectFrom('api_keys').select('spent_micros').where('id', '=', id).executeTakeFirstOrThrow();
  return BigInt(row.spent_micros);
}

describeEachDialect('units of work', (ctx: DialectContext) => {
  it('run on SQLite directly and on PostgreSQL through Kysely', async () => {
    const database = await ctx.open();
    assert.equal(database.sqlite !== undefined, ctx.dialect === 'sqlite');
  });

  it('commit every statement of the body and answer what it returns', async () => {
    const database = await ctx.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    assert.equal(await runUnit(database, () => addSpent(database.db, id, 5n, 3)), 15n);
    assert.equal(await spentOf(database, id), 15n);
  });

  it('roll everything back when the body throws after writing', async () => {
    const database = await ctx.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    const failing = function* (): Unit<void> {
      yield* addSpent(database.db, id, 7n, 2);
      throw new Error('refused after two writes');
    };
    await assert.rejects(runUnit(database, failing), /refused after two writes/);
    assert.equal(await spentOf(database, id), 0n);
    // The connection is usable afterwards (not left inside a transaction).
    assert.equal(await runUnit(database, () => addSpent(database.db, id, 1n)), 1n);
  });

  it('roll everything back when a statement fails', async () => {
    const database = await ctx.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    const failing = function* (): Unit<void> {
      yield* addSpent(database.db, id, 3n);
      // spent_micros >= 0 is a check constraint.
      yield* addSpent(database.db, id, -10n);
    };
    await assert.rejects(runUnit(database, failing), /check|constraint/i);
    assert.equal(await spentOf(database, id), 0n);
  });

  it('wait for a Kysely transaction in progress, never interleaving with it', async () => {
    const database = await ctx.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const order: string[] = [];
    const kysely = database.db.transaction().execute(async (trx) => {
      await trx.updateTable('api_keys').set({ spent_micros: 100n }).where('id', '=', id).execute();
      order.push('kysely wrote');
      await held;
      order.push('kysely commits');
    });
    // Let the Kysely transaction take the connection first.
    while (order.length === 0) await new Promise((r) => setImmediate(r));
    const unit = runUnit(database, () => addSpent(database.db, id, 1n)).then((v) => {
      order.push('unit done');
      return v;
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(order, ['kysely wrote'], 'the unit waits while the transaction is open');
    release();
    await kysely;
    // It saw the committed 100, not a value from inside the open transaction.
    assert.equal(await unit, 101n);
    assert.deepEqual(order, ['kysely wrote', 'kysely commits', 'unit done']);
  });

  it('concurrent units each see the others committed (on SQLite, in call order)', async () => {
    const database = await ctx.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    const results = await Promise.all([1n, 2n, 3n, 4n].map((n) => runUnit(database, () => addSpent(database.db, id, n, 2))));
    assert.equal(await spentOf(database, id), 20n);
    if (ctx.dialect === 'sqlite') assert.deepEqual(results, [2n, 6n, 12n, 20n]);
    else assert.equal(new Set(results).size, 4);
  });

  it('reject once the database is closed', async () => {
    const storage = await ctx.fresh();
    const database = await storage.open();
    const id = (await createKeysStore(database).create({ name: 'u', budgetMicros: null })).record.id;
    await database.close();
    await assert.rejects(runUnit(database, () => addSpent(database.db, id, 1n)));
  });
});
