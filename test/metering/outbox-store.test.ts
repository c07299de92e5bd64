import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createOutboxStore, type OutboxStore } from '../../src/metering/outbox-store.js';
import { describeEachDialect } from '../helpers/databases.js';

const T0 = '2025-01-01T00:00:00.000Z';
const at = (ms: number): string => new Date(Date.parse(T0) + ms).toISOString();

async function enqueue(store: OutboxStore, db: Parameters<OutboxStore['enqueue']>[0], keyId: string, n: number): Promise<void> {
  await store.enqueue(db, { eventId: `${keyId}-${n}`, keyId, type: 'usage.settled', payload: { n } });
}

describeEachDialect('outbox store', ({ fresh }) => {
  async function setup(leaseMs = 30_000) {
    const storage = await fresh();
    const database = await storage.open();
    const store = createOutboxStore(database, { clock: () => new Date(T0), leaseMs });
    return { database, store, storage };
  }

  it('hands out only the oldest undelivered event of each key', async () => {
    const { database, store } = await setup();
    await enqueue(store, database.db, 'A', 1);
    await enqueue(store, database.db, 'B', 1);
    await enqueue(store, database.db, 'A', 2);
    await enqueue(store, database.db, 'B', 2);
    await enqueue(store, database.db, 'C', 1);

    const first = await store.claimDue(10, T0);
    assert.deepEqual(first.map((e) => e.eventId), ['A-1', 'B-1', 'C-1']);
    assert.ok(first.every((e) => e.attempts === 1));
    // Claimed events are leased: nothing more for A, B or C until they are settled.
    assert.deepEqual(await store.claimDue(10, T0), []);

    await store.markDelivered(first[0]!.seq);
    await store.markFailed(first[1]!.seq, 'receiver answered 503', at(5000));
    const second = await store.claimDue(10, at(1000));
    assert.deepEqual(second.map((e) => e.eventId), ['A-2']);
    // B-2 must wait behind B-1, which is not due again before its retry time.
    const third = await store.claimDue(10, at(5000));
    assert.deepEqual(third.map((e) => [e.eventId, e.attempts, e.lastError]), [['B-1', 2, 'receiver answered 503']]);
    assert.equal(await store.pending(), 4);
  });

  it('keeps per-key order through failures until every event is delivered', async () => {
    const { database, store } = await setup();
    for (let n = 1; n <= 4; n++) for (const key of ['A', 'B']) await enqueue(store, database.db, key, n);
    const delivered: string[] = [];
    let clock = 0;
    for (let round = 0; round < 40 && (await store.pending()) > 0; round++) {
      clock += 1000;
      for (const event of await store.claimDue(3, at(clock))) {
        // Every other attempt fails, as a flaky receiver would.
        if ((round + Number(event.seq)) % 2 === 0) await store.markFailed(event.seq, 'down', at(clock + 500));
        else {
          delivered.push(event.eventId);
          await store.markDelivered(event.seq);
        }
      }
    }
    assert.equal(await store.pending(), 0);
    assert.deepEqual(delivered.filter((id) => id.startsWith('A')), ['A-1', 'A-2', 'A-3', 'A-4']);
    assert.deepEqual(delivered.filter((id) => id.startsWith('B')), ['B-1', 'B-2', 'B-3', 'B-4']);
  });

  it('re-offers an event whose claimer vanished, with the same id, once its lease runs out', async () => {
    const { database, store } = await setup(10_000);
    await enqueue(store, database.db, 'A', 1);
    const [claimed] = await store.claimDue(1, T0);
    assert.deepEqual(await store.claimDue(1, at(9_999)), []);
    const [again] = await store.claimDue(1, at(10_000));
    assert.equal(again?.eventId, claimed?.eventId);
    assert.equal(again?.attempts, 2);
  });

  it('stores an event id once, and claims it once across connections', async () => {
    const { database, store, storage } = await setup();
    assert.equal(await store.enqueue(database.db, { eventId: 'E', keyId: 'A', type: 't', payload: { big: 2n ** 64n } }), true);
    assert.equal(await store.enqueue(database.db, { eventId: 'E', keyId: 'A', type: 't', payload: {} }), false);
    assert.deepEqual((await store.get('E'))?.payload, { big: '18446744073709551616' });
    const others = await Promise.all([storage.open(), storage.open()]);
    const stores = [store, ...others.map((d) => createOutboxStore(d, { clock: () => new Date(T0) }))];
    const claims = await Promise.all(stores.map((s) => s.claimDue(5, T0)));
    assert.equal(claims.flat().length, 1);
  });

  it('writes an event only if the surrounding transaction commits', async () => {
    const { database, store } = await setup();
    await assert.rejects(
      database.db.transaction().execute(async (trx) => {
        await store.enqueue(trx, { eventId: 'rolled-back', keyId: 'A', type: 't', payload: {} });
        throw new Error('abort');
      }),
      /abort/,
    );
    assert.equal(await store.get('rolled-back'), null);
  });
});
