import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sql, type KyselyPlugin } from 'kysely';
import type { Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { createLedger, type Ledger } from '../../src/metering/ledger.js';
import { describeEachDialect } from '../helpers/databases.js';
import { keyWithBudget, reserveInput, uid } from '../helpers/ledger.js';

/**
 * Budget slices (src/metering/budget-slices.ts) through the ledger: several
 * ledgers, each under its own lease like a service process, share one key's
 * budget. PostgreSQL uses them by default; here SQLite runs them too, so the
 * statements are proven on both dialects.
 */

const AMOUNT = 1_000n;

async function until<T>(fn: () => Promise<T | undefined>, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function processLedger(database: Database, idleMs = 200): Promise<{ ledger: Ledger; leaseId: string }> {
  const leaseId = uid('lease');
  await createLeaseStore(database).acquire({ id: leaseId, host: 'test', pid: 1, expiryMs: 60_000 });
  return { ledger: createLedger(database, { leaseId, budgetSlices: true, sliceIdleReturnMs: idleMs }), leaseId };
}

const keyRow = async (database: Database, id: string) => {
  const k = await database.db.selectFrom('api_keys').select(['spent_micros', 'reserved_micros']).where('id', '=', id).executeTakeFirstOrThrow();
  return { spent: BigInt(k.spent_micros), reserved: BigInt(k.reserved_micros) };
};

describeEachDialect('budget slices', (ctx) => {
  it('three ledgers, 40 concurrent reservations on a budget of 10: exactly 10 held; settled and idle, the key counts every charge and holds nothing', async () => {
    const database = await ctx.open();
    const keyId = await keyWithBudget(database, 10n * AMOUNT);
    const ledgers = await Promise.all([processLedger(database), processLedger(database), processLedger(database)]);
    const ids = Array.from({ length: 40 }, () => uid('req'));
    const out = await Promise.all(ids.map((id, i) => ledgers[i % 3]!.ledger.reserve(reserveInput(keyId, AMOUNT, id))));
    assert.equal(out.filter((r) => r.ok).length, 10);
    const rows = await database.db.selectFrom('requests').select(['id', 'funded_by', 'lease_id']).where('key_id', '=', keyId).execute();
    assert.ok(rows.every((r) => r.funded_by === 'slice'));
    for (const r of rows) {
      const owner = ledgers.find((l) => l.leaseId === r.lease_id)!;
      assert.equal((await owner.ledger.settle({ requestId: r.id, chargeMicros: 600n, credits: 1200, images: 1 })).settled, true);
    }
    const after = await until(async () => {
      const k = await keyRow(database, keyId);
      return k.reserved === 0n ? k : undefined;
    }, 'every slice returned');
    assert.equal(after.spent, 6_000n);
    assert.equal((await createKeysStore(database).get(keyId))?.spentMicros, 6_000n);
    assert.deepEqual(await database.db.selectFrom('budget_slices').select('id').where('key_id', '=', keyId).execute(), []);
  });

  it('a request is refused only when no live slice and no unsliced remainder can cover it: an idle slice gives back what it does not use', async () => {
    // Its own storage: the slice's size depends on how many leases are live.
    const database = await (await ctx.fresh()).open();
    const keyId = await keyWithBudget(database, 8n * AMOUNT);
    const a = await processLedger(database, 300);
    const b = await processLedger(database, 300);
    // a takes a slice larger than one request (a quarter of the headroom with two leases live) and keeps one request open.
    const first = uid('req');
    assert.equal((await a.ledger.reserve(reserveInput(keyId, AMOUNT, first))).ok, true);
    const slice = await database.db.selectFrom('budget_slices').select('granted_micros').where('lease_id', '=', a.leaseId).executeTakeFirstOrThrow();
    assert.equal(BigInt(slice.granted_micros), 2n * AMOUNT, 'a holds one request’s worth it does not use');
    // b needs more than what a's slice left unsliced: served once a's unused part is back.
    for (let i = 0; i < 7; i++) assert.equal((await b.ledger.reserve(reserveInput(keyId, AMOUNT))).ok, true, `request ${i} of b`);
    const refused = await b.ledger.reserve(reserveInput(keyId, AMOUNT));
    assert.equal(refused.ok, false, 'the budget is all held');
  });

  it('a dead process’s slice counts once its lease expired: its settled charges are spent, the rest is free again', async () => {
    const database = await ctx.open();
    const keyId = await keyWithBudget(database, 4n * AMOUNT);
    const dead = await processLedger(database, 60_000);
    const live = await processLedger(database);
    const id = uid('req');
    assert.equal((await dead.ledger.reserve(reserveInput(keyId, AMOUNT, id))).ok, true);
    await dead.ledger.settle({ requestId: id, chargeMicros: 700n, credits: 1400, images: 1 });
    // The process dies with its slice (its idle return far away); its lease row goes.
    await createLeaseStore(database).release(dead.leaseId);
    const refusedBefore = await database.db.selectFrom('budget_slices').select('granted_micros').where('lease_id', '=', dead.leaseId).executeTakeFirstOrThrow();
    assert.ok(BigInt(refusedBefore.granted_micros) >= AMOUNT);
    // The live process may reserve all that is not spent: 3 requests of 1,000 from 3,300.
    for (let i = 0; i < 3; i++) assert.equal((await live.ledger.reserve(reserveInput(keyId, AMOUNT))).ok, true, `request ${i}`);
    assert.equal((await live.ledger.reserve(reserveInput(keyId, AMOUNT))).ok, false);
    const k = await keyRow(database, keyId);
    assert.equal(k.spent, 700n, 'the dead slice’s charge is spent');
  });

  it('a request released, orphaned, then settled late: its charge is counted once, by its slice or on the key', async () => {
    const database = await ctx.open();
    const keyId = await keyWithBudget(database, 10n * AMOUNT);
    const { ledger } = await processLedger(database, 100);
    const released = uid('req');
    const orphan = uid('req');
    assert.equal((await ledger.reserve(reserveInput(keyId, AMOUNT, released))).ok, true);
    assert.equal((await ledger.reserve(reserveInput(keyId, AMOUNT, orphan))).ok, true);
    await ledger.release({ requestId: released, status: 'failed' });
    assert.equal(await ledger.markOrphaned(orphan), true);
    await until(async () => ((await keyRow(database, keyId)).reserved === 0n ? true : undefined), 'the slice returned');
    // Settled after its slice was returned: on the key row at once.
    assert.equal((await ledger.settle({ requestId: orphan, chargeMicros: 400n, credits: 800, images: 1 })).settled, true);
    assert.deepEqual(await keyRow(database, keyId), { spent: 400n, reserved: 0n });
  });

  if (ctx.dialect === 'postgres') {
    it('a reservation whose answer was lost after its commit keeps its hold counted: the budget is never overspent', async () => {
      const base = await ctx.open();
      const keyId = await keyWithBudget(base, 2n * AMOUNT);
      // The grouped write that wrote the row commits, then its answer is lost (as a dropped connection would lose it).
      let lose = true;
      const losing: KyselyPlugin = {
        transformQuery: (args) => args.node,
        transformResult: async (args) => {
          if (lose && args.result.rows.length > 0) {
            lose = false;
            throw new Error('Connection terminated unexpectedly');
          }
          return args.result;
        },
      };
      const leaseId = uid('lease');
      await createLeaseStore(base).acquire({ id: leaseId, host: 'test', pid: 1, expiryMs: 60_000 });
      const ledger = createLedger({ ...base, writes: base.writes!.withPlugin(losing) }, { leaseId, budgetSlices: true, sliceIdleReturnMs: 60_000 });
      const lost = uid('req');
      await assert.rejects(ledger.reserve(reserveInput(keyId, AMOUNT, lost)), /Connection terminated/);
      assert.equal((await ledger.getRequest(lost))?.status, 'reserved', 'the row was written');
      // One more fits the budget beside it, never two.
      const more = await Promise.all([uid('req'), uid('req')].map((id) => ledger.reserve(reserveInput(keyId, AMOUNT, id))));
      assert.ok(more.filter((r) => r.ok).length <= 1, `served ${more.filter((r) => r.ok).length} beside a hold of ${AMOUNT} on a budget of ${2n * AMOUNT}`);
      const held = await base.db.selectFrom('requests').select(sql<string>`coalesce(sum(reserved_micros), 0)`.as('held')).where('key_id', '=', keyId).where('status', '=', 'reserved').executeTakeFirstOrThrow();
      assert.ok(BigInt(held.held) <= 2n * AMOUNT);
    });
  }
});

describe('a key given a budget', () => {
  describeEachDialect('counts what it spent without one', (ctx) => {
    it('its requests settled without a budget are its starting spend; the admin view sums its rows', async () => {
      const database = await ctx.open();
      const keys = createKeysStore(database);
      const keyId = await keyWithBudget(database, null);
      const { ledger } = await processLedger(database);
      const done = uid('req');
      assert.equal((await ledger.reserve(reserveInput(keyId, AMOUNT, done))).ok, true);
      await ledger.settle({ requestId: done, chargeMicros: 300n, credits: 600, images: 1 });
      assert.equal((await ledger.reserve(reserveInput(keyId, AMOUNT))).ok, true, 'in flight when the budget is set');
      assert.deepEqual(await keyRow(database, keyId), { spent: 0n, reserved: 0n }, 'no shared row written without a budget');
      const viewed = await keys.get(keyId);
      assert.deepEqual([viewed?.spentMicros, viewed?.reservedMicros], [300n, AMOUNT]);
      await keys.update(keyId, { budgetMicros: 2_000n });
      // The charge settled, plus the request in flight at its maximum.
      assert.equal((await keyRow(database, keyId)).spent, 1_300n);
      assert.equal((await ledger.reserve(reserveInput(keyId, AMOUNT))).ok, false, '1,300 + 1,000 is over 2,000');
    });
  });
});
