import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { createLeaseStore, holdLease } from '../../src/metering/lease-store.js';
import { mayReconcile, reconcileScope } from '../../src/metering/leases.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { describeEachDialect, type DialectContext } from '../helpers/databases.js';
import { keyWithBudget, manualClock, reserveInput, uid } from '../helpers/ledger.js';

const lease = (id: string) => ({ id, host: 'test-host', pid: 4242, expiryMs: 10_000 });

async function until<T>(fn: () => Promise<T | undefined>, what: string): Promise<T> {
  const end = Date.now() + 20_000;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describeEachDialect('lease store', (ctx: DialectContext) => {
  describe('heartbeat and expiry', () => {
    it('a renewal moves the expiry from the renewal’s time; past it, the renewal reports the lease had lapsed', async () => {
      const database = await ctx.open();
      const time = manualClock('2026-12-07T12:00:00.000Z');
      const store = createLeaseStore(database, { clock: time.clock });
      const id = uid('lease');
      const acquired = await store.acquire(lease(id));
      assert.equal(acquired.expiresAtMs, Date.parse('2026-12-07T12:00:10.000Z'));

      time.set('2026-12-07T12:00:02.000Z');
      assert.equal(await store.renew(lease(id)), 'renewed');
      const [row] = (await store.list()).filter((l) => l.id === id);
      assert.ok(row);
      assert.equal(row.heartbeatAt, '2026-12-07T12:00:02.000Z');
      assert.equal(row.startedAt, '2026-12-07T12:00:00.000Z');
      assert.equal(row.expiresAtMs, Date.parse('2026-12-07T12:00:12.000Z'));
      assert.deepEqual([row.host, row.pid], ['test-host', 4242]);

      time.set('2026-12-07T12:00:12.000Z');
      assert.equal(await store.renew(lease(id)), 'lapsed', 'expiring exactly now counts as expired');
      assert.equal((await store.list()).find((l) => l.id === id)?.expiresAtMs, Date.parse('2026-12-07T12:00:22.000Z'));
    });

    it('a released lease is gone; renewing it writes it again and says so', async () => {
      const database = await ctx.open();
      const store = createLeaseStore(database);
      const id = uid('lease');
      await store.acquire(lease(id));
      await store.release(id);
      assert.equal((await store.list()).some((l) => l.id === id), false);
      assert.equal(await store.renew(lease(id)), 'missing');
      assert.equal((await store.list()).some((l) => l.id === id), true);
    });

    it('holdLease renews on its own and deletes the row on release', async () => {
      const database = await ctx.open();
      const store = createLeaseStore(database);
      const held = await holdLease(store, { logger: pino({ level: 'silent' }), renewMs: 50, expiryMs: 10_000 });
      const first = (await store.list()).find((l) => l.id === held.id);
      assert.ok(first);
      await until(async () => {
        const now = (await store.list()).find((l) => l.id === held.id);
        return now && now.heartbeatAt !== first.heartbeatAt ? now : undefined;
      }, 'a renewal');
      await held.release();
      assert.equal((await store.list()).some((l) => l.id === held.id), false);
    });
  });

  describe('a lease lost', () => {
    it('holdLease: renewals failing past the expiry make the lease invalid (logged once), a renewal that works makes it valid again', async () => {
      const database = await ctx.open();
      const real = createLeaseStore(database);
      let down = false;
      const store = { ...real, renew: (l: Parameters<typeof real.renew>[0]) => (down ? Promise.reject(new Error('database unreachable')) : real.renew(l)) };
      let clock = 1_000_000;
      const lines: Array<{ level: number; msg: string }> = [];
      const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as { level: number; msg: string }) });
      const held = await holdLease(store, { logger, renewMs: 20, expiryMs: 1_000, now: () => clock });
      assert.equal(held.valid(), true);
      down = true;
      clock += 990;
      assert.equal(held.valid(), false, 'within one renewal of the expiry, by its own clock, it is no longer trusted');
      const failed = () => lines.filter((l) => /lease has expired/.test(l.msg)).length;
      await until(async () => (failed() > 0 ? true : undefined), 'the expiry to be logged');
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(failed(), 1, 'logged once, not at every failed renewal');
      down = false;
      await until(async () => (held.valid() ? true : undefined), 'a renewal to succeed');
      assert.ok(lines.some((l) => /renewed again/.test(l.msg)));
      await held.release();
    });

    it('adopt: a request moves to another lease only while its owner’s lease is not live; the old owner’s settle then changes nothing', async () => {
      const database = await ctx.open();
      const time = manualClock('2026-12-07T12:00:00.000Z');
      const store = createLeaseStore(database, { clock: time.clock });
      const a = uid('owner');
      await store.acquire(lease(a));
      const keyId = await keyWithBudget(database, 1_000n);
      const owner = createLedger(database, { leaseId: a, clock: time.clock });
      const adopter = createLedger(database, { leaseId: 'adopter', clock: time.clock });
      const id = uid('req');
      await owner.reserve(reserveInput(keyId, 100n, id));
      assert.equal(await adopter.adopt({ requestId: id, fromLeaseId: a, toLeaseId: 'adopter' }), false, 'the owner’s lease is live');
      time.set('2026-12-07T12:00:11.000Z');
      assert.equal(await adopter.adopt({ requestId: id, fromLeaseId: a, toLeaseId: 'adopter' }), true);
      assert.equal(await adopter.adopt({ requestId: id, fromLeaseId: a, toLeaseId: 'third' }), false, 'taken once');
      const late = await owner.settle({ requestId: id, chargeMicros: 60n, credits: 120, images: 1 });
      assert.equal(late.settled, false, 'the old owner’s write changes nothing');
      assert.equal(late.request.leaseId, 'adopter');
      assert.equal((await owner.release({ requestId: id, status: 'failed' })).released, false);
      const done = await adopter.settle({ requestId: id, chargeMicros: 60n, credits: 120, images: 1 });
      assert.equal(done.settled, true);
      // On PostgreSQL the owner's hold came from its budget slice: returned by a round that finds the owner's lease gone.
      const returned = await adopter.returnSlices({ live: ['adopter'], ownLeaseId: 'adopter', createdBefore: '', ownCreatedBefore: '' });
      assert.equal(returned, database.dialect === 'postgres' ? 1 : 0);
      const key = await database.db.selectFrom('api_keys').select(['spent_micros', 'reserved_micros']).where('id', '=', keyId).executeTakeFirstOrThrow();
      assert.deepEqual([BigInt(key.spent_micros), BigInt(key.reserved_micros)], [60n, 0n]);
    });

    it('sweep: an expired lease goes once no open request names it; a live one, or one still owning an open request, stays', async () => {
      const database = await ctx.open();
      const time = manualClock('2026-12-07T12:00:00.000Z');
      const store = createLeaseStore(database, { clock: time.clock });
      const [idle, owning, live] = [uid('idle'), uid('owning'), uid('live')];
      for (const id of [idle, owning]) await store.acquire(lease(id));
      const keyId = await keyWithBudget(database, null);
      const req = uid('req');
      await createLedger(database, { leaseId: owning }).reserve(reserveInput(keyId, 10n, req));
      const closed = uid('req');
      const idleLedger = createLedger(database, { leaseId: idle });
      await idleLedger.reserve(reserveInput(keyId, 10n, closed));
      await idleLedger.release({ requestId: closed, status: 'released' });
      time.set('2026-12-07T12:00:30.000Z');
      await store.acquire(lease(live));
      await store.sweep();
      const left = new Set((await store.list()).map((l) => l.id));
      assert.equal(left.has(idle), false, 'expired, and only a closed request names it');
      assert.equal(left.has(owning), true, 'an open request still names it: its expiry bounds that request’s lost submits');
      assert.equal(left.has(live), true);
    });
  });

  describe('requests name their lease', () => {
    it('reserve writes the ledger’s lease on the request; a ledger without one writes none', async () => {
      const database = await ctx.open();
      const keyId = await keyWithBudget(database, null);
      const leased = createLedger(database, { leaseId: 'lease-a' });
      const a = uid('req');
      const b = uid('req');
      await leased.reserve(reserveInput(keyId, 10n, a));
      await createLedger(database).reserve(reserveInput(keyId, 10n, b));
      assert.equal((await leased.getRequest(a))?.leaseId, 'lease-a');
      assert.equal((await leased.getRequest(b))?.leaseId, null);
      const store = createLeaseStore(database);
      assert.deepEqual([...(await store.ownersOfOpenRequests(['lease-a', 'lease-b']))], ['lease-a']);
      await leased.release({ requestId: a, status: 'released' });
      assert.equal((await store.ownersOfOpenRequests(['lease-a'])).size, 0, 'a closed request holds nothing');
    });
  });

  describe('the ledger’s lists follow the lease rule', () => {
    it('open requests, open jobs and lost submits: exactly the rows mayReconcile allows', async () => {
      // The suite's schema is shared: only this test's rows (`mine`) are compared.
      const database = await ctx.open();
      const time = manualClock('2026-12-07T12:00:00.000Z');
      const store = createLeaseStore(database, { clock: time.clock });
      const own = uid('own');
      const peer = uid('peer');
      const dead = uid('dead');
      const gone = uid('gone');
      for (const id of [own, peer, dead]) await store.acquire(lease(id));
      const keyId = await keyWithBudget(database, null);
      const rows: Array<{ id: string; leaseId: string | null; createdAt: string }> = [];
      // Each owner has an old request and a young one, each with a submitted job and a lost submit.
      for (const owner of [own, peer, dead, gone, null]) {
        const ledger = createLedger(database, { clock: time.clock, leaseId: owner ?? undefined });
        for (const at of ['2026-12-07T12:00:00.000Z', '2026-12-07T12:10:00.000Z']) {
          time.set(at);
          const id = uid('req');
          await ledger.reserve({ ...reserveInput(keyId, 10n, id), jobs: 2 });
          await ledger.recordSubmit({ jobId: jobIdFor(id, 0), falRequestId: uid('fal') });
          rows.push({ id, leaseId: owner, createdAt: at });
        }
      }
      // At 12:10:05 the own and peer leases are renewed; the dead one expired at 12:00:10.
      time.set('2026-12-07T12:10:05.000Z');
      for (const id of [own, peer]) await store.renew(lease(id));
      const scope = reconcileScope({ ownLeaseId: own, leases: await store.list(), nowMs: time.clock().getTime(), olderThanMs: 60_000 });
      const expected = rows.filter((r) => mayReconcile(r, scope)).map((r) => r.id).sort();
      assert.equal(expected.length, 6, 'own old, dead both, gone both, lease-less old');

      const mine = new Set(rows.map((r) => r.id));
      const ledger = createLedger(database);
      const open = (await ledger.listOpen({ scope })).map((r) => r.id).filter((id) => mine.has(id)).sort();
      assert.deepEqual(open, expected);
      const jobs = (await ledger.listOpenJobs({ scope })).filter((j) => mine.has(j.requestId));
      assert.deepEqual(jobs.map((j) => j.requestId).sort(), expected);
      assert.ok(jobs.every((j) => j.id.endsWith('/0')));
      const lost = (await ledger.listLostSubmits({ scope })).filter((j) => mine.has(j.requestId));
      assert.deepEqual(lost.map((j) => j.requestId).sort(), expected);
      assert.ok(lost.every((j) => j.id.endsWith('/1')));

      // A process that knows what it is working on takes its own young request too.
      const eager = reconcileScope({ ownLeaseId: own, leases: await store.list(), nowMs: time.clock().getTime(), olderThanMs: 60_000, ownOlderThanMs: 0 });
      const eagerExpected = rows.filter((r) => mayReconcile(r, eager)).map((r) => r.id).sort();
      assert.equal(eagerExpected.length, 7, 'and the own young one');
      assert.deepEqual((await ledger.listOpen({ scope: eager })).map((r) => r.id).filter((id) => mine.has(id)).sort(), eagerExpected);
    });
  });
});
