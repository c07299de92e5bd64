import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { SelectQueryNode, type KyselyPlugin } from 'kysely';
import type { Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import {
  canonicalDecimal,
  createLedger,
  decimalsEqual,
  UnknownKeyError,
  UnknownRequestError,
  type Ledger,
} from '../../src/metering/ledger.js';
import { createOutboxStore } from '../../src/metering/outbox-store.js';
import { describeEachDialect, runInProcesses, type DialectContext } from '../helpers/databases.js';

const BEYOND_2_53 = 2n ** 53n + 1n;

function uid(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

/** A clock the test moves by hand. */
function manualClock(start: string): { clock: () => Date; set(iso: string): void } {
  let now = new Date(start);
  return { clock: () => new Date(now), set: (iso) => (now = new Date(iso)) };
}

async function keyWithBudget(database: Database, budgetMicros: bigint | null): Promise<string> {
  const { record } = await createKeysStore(database).create({ name: 'test', budgetMicros });
  return record.id;
}

async function keyState(database: Database, id: string): Promise<{ spent: bigint; reserved: bigint }> {
  const key = await createKeysStore(database).get(id);
  assert.ok(key);
  return { spent: key.spentMicros, reserved: key.reservedMicros };
}

function reserveInput(keyId: string, maxChargeMicros: bigint, requestId = uid('req')) {
  return { requestId, keyId, model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', user: 'u-1', maxChargeMicros };
}

describe('canonicalDecimal', () => {
  const cases: Array<[string | number | bigint, string]> = [
    ['1', '1'],
    ['1.0', '1'],
    ['01.500', '1.5'],
    ['.5', '0.5'],
    ['5.', '5'],
    ['0.000', '0'],
    ['-0', '0'],
    ['-2.50', '-2.5'],
    ['1e0', '1'],
    ['1.25E2', '125'],
    ['12e-3', '0.012'],
    [0.1, '0.1'],
    [1e-7, '0.0000001'],
    [3n, '3'],
    [' 2.0 ', '2'],
    ['123456789012345678901234567890.000000000000000000001', '123456789012345678901234567890.000000000000000000001'],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(String(input))} → ${expected}`, () => assert.equal(canonicalDecimal(input), expected));
  }
  it('refuses what is not a decimal', () => {
    for (const bad of ['', '.', 'abc', '1.2.3', '0x10', 'NaN', '1e99999']) assert.throws(() => canonicalDecimal(bad), RangeError, bad);
    assert.throws(() => canonicalDecimal(Number.POSITIVE_INFINITY), RangeError);
  });
  it('compares numerically', () => {
    assert.ok(decimalsEqual('1', '1.0'));
    assert.ok(!decimalsEqual('1', '1.0000001'));
  });
});

describeEachDialect('ledger', (ctx: DialectContext) => {
  const { dialect, open, fresh } = ctx;

  describe('reserve and settle', () => {
    it('moves exact amounts above 2^53 between reserved and spent', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 2n ** 62n);
      const requestId = uid('req');
      assert.deepEqual(await ledger.reserve(reserveInput(keyId, BEYOND_2_53 * 2n, requestId)), { ok: true });
      assert.deepEqual(await keyState(database, keyId), { spent: 0n, reserved: BEYOND_2_53 * 2n });

      const charge = BEYOND_2_53 + 2n;
      const { settled, request } = await ledger.settle({
        requestId,
        chargeMicros: charge,
        credits: BEYOND_2_53 * 3n,
        upstreamCostMicros: BEYOND_2_53,
        images: 2,
      });
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
      assert.deepEqual(await ledger.reserve(reserveInput(keyId, 50n)), {
        ok: false,
        reason: 'insufficient_quota',
        budgetMicros: 100n,
        spentMicros: 0n,
        reservedMicros: 60n,
      });
      await ledger.settle({ requestId: first, chargeMicros: 30n, credits: 60, upstreamCostMicros: 20n, images: 1 });
      assert.equal((await ledger.reserve(reserveInput(keyId, 70n))).ok, true);
      const refused = await ledger.reserve(reserveInput(keyId, 1n));
      assert.deepEqual(refused, { ok: false, reason: 'insufficient_quota', budgetMicros: 100n, spentMicros: 30n, reservedMicros: 70n });
    });

    it('refuses nothing for a key without a budget, and throws for a key with no row', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keys = createKeysStore(database);
      const staticKey = await keys.ensureStatic('sk-static-for-ledger-' + dialect);
      assert.equal((await ledger.reserve(reserveInput(staticKey.id, 2n ** 62n))).ok, true);
      await assert.rejects(ledger.reserve(reserveInput('no-such-key', 1n)), UnknownKeyError);
    });

    it('refuses a request id that is taken (a reused x-request-id) and rolls its hold back', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 100n, requestId));
      assert.deepEqual(await ledger.reserve(reserveInput(keyId, 100n, requestId)), { ok: false, reason: 'request_id_taken' });
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
      const first = await ledger.settle({ requestId, chargeMicros: 40n, credits: 80, upstreamCostMicros: 30n, images: 1, outboxEvent: event });
      const second = await ledger.settle({ requestId, chargeMicros: 99n, credits: 1, upstreamCostMicros: 1n, images: 4, outboxEvent: event });
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
              upstreamCostMicros: 1n,
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
      await assert.rejects(ledger.settle({ requestId: 'nope', chargeMicros: 1n, credits: 1, upstreamCostMicros: 1n, images: 1 }), UnknownRequestError);
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
      await ledger.settle({ requestId: settledId, chargeMicros: 50n, credits: 1, upstreamCostMicros: 1n, images: 1 });
      await ledger.release({ requestId: releasedId, status: 'released', errorCode: 'client_gone' });
      assert.equal((await ledger.release({ requestId: settledId, status: 'failed' })).released, false);
      const late = await ledger.settle({ requestId: releasedId, chargeMicros: 50n, credits: 1, upstreamCostMicros: 1n, images: 1 });
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

  describe('upstream jobs', () => {
    it('records submits idempotently, fans out to several fal ids, and refuses a fal id of another request', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      const other = uid('req');
      await ledger.reserve(reserveInput(keyId, 10n, requestId));
      await ledger.reserve(reserveInput(keyId, 10n, other));
      const falA = uid('fal');
      const falB = uid('fal');
      const first = await ledger.recordSubmit({ requestId, falRequestId: falA, endpoint: 'fal-ai/z-image/turbo' });
      const repeat = await ledger.recordSubmit({ requestId, falRequestId: falA, endpoint: 'fal-ai/z-image/turbo' });
      assert.deepEqual(repeat, first);
      await ledger.recordSubmit({ requestId, falRequestId: falB, endpoint: 'fal-ai/z-image/turbo' });
      await assert.rejects(ledger.recordSubmit({ requestId: other, falRequestId: falA, endpoint: 'x' }), /already recorded/);
      const request = await ledger.getRequest(requestId);
      assert.equal(request?.status, 'submitted');
      assert.deepEqual(request?.jobs.map((j) => j.falRequestId).sort(), [falA, falB].sort());
      assert.ok(request?.jobs.every((j) => j.status === 'submitted'));
    });

    it('completes a job once, comparing units as decimals, and counts disagreements', async () => {
      const storage = await fresh();
      const database = await storage.open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 10n, requestId));
      const [same, differs, noHeader] = [uid('fal'), uid('fal'), uid('fal')];
      for (const fal of [same, differs, noHeader]) await ledger.recordSubmit({ requestId, falRequestId: fal, endpoint: 'e' });

      const a = await ledger.completeJob({ falRequestId: same, images: 1, pixels: 1024 * 768, unitsEstimate: '1.0', unitsFal: '1', upstreamCostMicros: 5000n });
      assert.deepEqual([a.changed, a.unitsMismatch, a.job.status, a.job.unitsEstimate, a.job.unitsFal], [true, false, 'completed', '1', '1']);
      const b = await ledger.completeJob({ falRequestId: differs, images: 2, pixels: 2_097_152, unitsEstimate: '2.097152', unitsFal: '3', upstreamCostMicros: 15_000n });
      assert.equal(b.unitsMismatch, true);
      const c = await ledger.completeJob({ falRequestId: noHeader, images: 1, pixels: 1, unitsEstimate: 1, unitsFal: null, upstreamCostMicros: 1n });
      assert.equal(c.unitsMismatch, false);

      const repeat = await ledger.completeJob({ falRequestId: same, images: 9, pixels: 9, unitsEstimate: '9', unitsFal: '9', upstreamCostMicros: 9n });
      assert.equal(repeat.changed, false);
      assert.equal(repeat.job.upstreamCostMicros, 5000n);
      assert.equal((await ledger.failJob({ falRequestId: same, status: 'failed' })).changed, false);

      const disagreements = await ledger.unitsDisagreements();
      assert.equal(disagreements.count, 1);
      assert.deepEqual(disagreements.jobs.map((j) => [j.falRequestId, j.unitsEstimate, j.unitsFal]), [[differs, '2.097152', '3']]);
    });

    it('lets a completion override an earlier cancel, and records duplicates without changing the request', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 10n, requestId));
      const fal = uid('fal');
      await ledger.recordSubmit({ requestId, falRequestId: fal, endpoint: 'e' });
      assert.equal((await ledger.failJob({ falRequestId: fal, status: 'cancelled' })).job.status, 'cancelled');
      assert.equal((await ledger.completeJob({ falRequestId: fal, images: 1, pixels: 4, unitsEstimate: '1', upstreamCostMicros: 3n })).job.status, 'completed');

      const dup = uid('fal');
      const duplicate = await ledger.markDuplicate({ requestId, falRequestId: dup, endpoint: 'e' });
      assert.equal(duplicate.status, 'duplicate');
      const completedDup = await ledger.completeJob({ falRequestId: dup, images: 1, pixels: 4, unitsEstimate: '1', upstreamCostMicros: 3n });
      assert.deepEqual([completedDup.changed, completedDup.job.status, completedDup.job.upstreamCostMicros], [true, 'duplicate', 3n]);
      const submittedThenDup = uid('fal');
      await ledger.recordSubmit({ requestId, falRequestId: submittedThenDup, endpoint: 'e' });
      assert.equal((await ledger.markDuplicate({ requestId, falRequestId: submittedThenDup, endpoint: 'e' })).status, 'duplicate');
    });
  });

  describe('settleJobs', () => {
    it('completes every job and settles the request in one transaction, and a repeat changes nothing', async () => {
      const database = await open();
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, 1000n);
      const requestId = uid('req');
      await ledger.reserve(reserveInput(keyId, 100n, requestId));
      const [one, two] = [uid('fal'), uid('fal')];
      for (const fal of [one, two]) await ledger.recordSubmit({ requestId, falRequestId: fal, endpoint: 'e' });
      const jobs = [
        { falRequestId: one, images: 4, pixels: 4 * 1024 * 1024, unitsEstimate: '4.194304', unitsFal: '4.194304', upstreamCostMicros: 21_000n },
        { falRequestId: two, images: 1, pixels: 1024 * 1024, unitsEstimate: '1.048576', unitsFal: '2', upstreamCostMicros: 5_000n },
      ];
      const settle = { requestId, chargeMicros: 30n, credits: 60, upstreamCostMicros: 26_000n, images: 5 };
      const out = await ledger.settleJobs({ jobs, settle });
      assert.deepEqual(out.jobs.map((j) => [j.job.falRequestId, j.job.status, j.changed, j.unitsMismatch, j.job.images]), [
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
      await ledger.reserve(reserveInput(keyId, 100n, requestId));
      const fal = uid('fal');
      await ledger.recordSubmit({ requestId, falRequestId: fal, endpoint: 'e' });
      await assert.rejects(
        ledger.settleJobs({
          jobs: [{ falRequestId: fal, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 1n }],
          settle: { requestId, chargeMicros: -1n, credits: 0, upstreamCostMicros: 1n, images: 1 },
        }),
        RangeError,
      );
      const row = await ledger.getRequest(requestId);
      assert.deepEqual([row?.status, row?.jobs.map((j) => [j.status, j.completedAt])], ['submitted', [['submitted', null]]]);
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
        await ledger.reserve(reserveInput(keyId, 100n, id));
        time.set('2025-05-01T10:00:01.000Z');
      }
      await ledger.recordSubmit({ requestId: submitted, falRequestId: 'fal-b', endpoint: 'e' });
      await ledger.settle({ requestId: settled, chargeMicros: 10n, credits: 1, upstreamCostMicros: 1n, images: 1 });
      assert.equal(await ledger.markOrphaned(orphan), true);
      assert.equal(await ledger.markOrphaned(orphan), false);
      assert.equal(await ledger.markOrphaned(settled), false);

      const open = await ledger.listOpen();
      assert.deepEqual(open.map((r) => [r.id, r.status, r.jobs.map((j) => j.falRequestId)]), [
        [reserved, 'reserved', []],
        [submitted, 'submitted', ['fal-b']],
      ]);
      assert.deepEqual((await ledger.listOpen({ createdBefore: '2025-05-01T10:00:01.000Z' })).map((r) => r.id), [reserved]);
      assert.deepEqual((await ledger.listOrphaned()).map((r) => [r.id, r.status]), [[orphan, 'orphaned']]);
      assert.deepEqual(await keyState(database, keyId), { spent: 10n, reserved: 200n });

      // Reconciliation found the orphan's job after all: it is charged, its hold having gone already.
      const late = await ledger.settle({ requestId: orphan, chargeMicros: 60n, credits: 1, upstreamCostMicros: 1n, images: 1 });
      assert.equal(late.settled, true);
      assert.deepEqual(await keyState(database, keyId), { spent: 70n, reserved: 200n });
      assert.equal((await ledger.listOrphaned()).length, 0);
    });
  });

  describe('usage', () => {
    async function seeded(): Promise<{ ledger: Ledger; keyA: string; keyB: string }> {
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
        await ledger.reserve({ ...reserveInput(keyId, charge, requestId), model });
        time.set(at);
        await ledger.settle({ requestId, chargeMicros: charge, credits: charge * 2n, upstreamCostMicros: charge / 2n, images });
      }
      // Neither an open nor a released request counts.
      await ledger.reserve({ ...reserveInput(keyA, 999n, 'u-open'), model: 'm-1' });
      await ledger.reserve({ ...reserveInput(keyA, 999n, 'u-released'), model: 'm-1' });
      time.set('2025-01-02T01:00:00.000Z');
      await ledger.release({ requestId: 'u-released', status: 'released' });
      return { ledger, keyA, keyB };
    }

    it('groups settled requests by UTC day, model and key, with totals', async () => {
      const { ledger, keyA, keyB } = await seeded();
      const byDay = await ledger.usage({ groupBy: 'day' });
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
      const byModel = await ledger.usage({ groupBy: 'model' });
      assert.deepEqual(byModel.rows.map((r) => [r.group, r.requests, r.chargeMicros]), [
        ['m-1', 2, 100n + BEYOND_2_53],
        ['m-2', 2, 600n],
      ]);
      const byKey = await ledger.usage({ groupBy: 'key' });
      assert.deepEqual(
        byKey.rows.map((r) => [r.group, r.chargeMicros]),
        [
          [keyA, 300n],
          [keyB, 400n + BEYOND_2_53],
        ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
      );
      assert.deepEqual((await ledger.usage()).totals, byDay.totals);
      assert.deepEqual((await ledger.usage()).rows, []);
    });

    it('treats from as inclusive and to as exclusive, in UTC whatever the offset given', async () => {
      const { ledger, keyB } = await seeded();
      const day2 = await ledger.usage({ from: '2025-01-02T00:00:00.000Z', to: '2025-01-03T00:00:00.000Z', groupBy: 'day' });
      assert.deepEqual(day2.rows.map((r) => [r.group, r.requests]), [['2025-01-02', 2]]);
      const sameWithOffset = await ledger.usage({ from: '2025-01-02T01:00:00+01:00', to: new Date('2025-01-03T00:00:00Z') });
      assert.deepEqual(sameWithOffset.totals, day2.totals);
      const justAfter = await ledger.usage({ from: '2025-01-02T00:00:00.001Z', to: '2025-01-03T00:00:00.001Z' });
      assert.equal(justAfter.totals.requests, 2);
      assert.equal(justAfter.totals.chargeMicros, BEYOND_2_53 + 400n);
      const filtered = await ledger.usage({ keyId: keyB, model: 'm-2' });
      assert.deepEqual([filtered.totals.requests, filtered.totals.chargeMicros], [1, 400n]);
      const empty = await ledger.usage({ from: '2030-01-01T00:00:00Z', groupBy: 'model' });
      assert.deepEqual(empty, { rows: [], totals: { requests: 0, images: 0, chargeMicros: 0n, credits: 0n, upstreamCostMicros: 0n } });
    });

    it('exports settled rows in order, fetched in keyset batches', async () => {
      const { ledger } = await seeded();
      const all = [];
      for await (const row of ledger.exportRows({ batchSize: 3 })) all.push(row);
      assert.deepEqual(all.map((r) => r.request_id), ['u-0', 'u-1', 'u-2', 'u-3']);
      assert.deepEqual(all[2], {
        request_id: 'u-2',
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
      for await (const row of ledger.exportRows({ from: '2025-01-02T00:00:00Z', to: '2025-01-03T00:00:00Z', batchSize: 1 })) {
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
    const database: Database = { ...base, db: base.db.withPlugin(counter) };
    const ledger = createLedger(database, { clock: () => new Date('2025-02-01T00:00:00.000Z') });
    const keyId = await keyWithBudget(base, null);
    // Same settled_at for every row: the keyset must break ties by id.
    for (let i = 0; i < 5; i++) {
      await ledger.reserve(reserveInput(keyId, 1n, `e-${i}`));
      await ledger.settle({ requestId: `e-${i}`, chargeMicros: 1n, credits: 1, upstreamCostMicros: 1n, images: 1 });
    }
    selects = 0;
    const ids = [];
    for await (const row of ledger.exportRows({ batchSize: 2 })) ids.push(row.request_id);
    assert.deepEqual(ids, ['e-0', 'e-1', 'e-2', 'e-3', 'e-4']);
    assert.equal(selects, 3);

    selects = 0;
    for await (const row of ledger.exportRows({ batchSize: 2 })) {
      assert.equal(row.request_id, 'e-0');
      break;
    }
    assert.equal(selects, 1);
  });
});
