/**
 * Budget slices (PostgreSQL): how a key with a budget is never overspent by
 * any number of processes without every request queueing on its key row.
 *
 * A process takes a slice of the key's remaining budget in one short
 * transaction (`take`: the key row's `reserved_micros` grows by the grant, a
 * `budget_slices` row names this process's lease) and then reserves from it
 * in memory: a request's hold is its `requests` row (`funded_by = 'slice'`,
 * `slice_id`), written without touching the key row. The key row therefore
 * always satisfies `spent_micros + reserved_micros <= budget_micros`, where
 * `reserved_micros` is every outstanding grant and `spent_micros` the
 * charges of slices returned.
 *
 * A slice is returned (`fold`) once no request it funded still holds: the
 * charges its settled requests carry are added to `spent_micros` and the
 * grant leaves `reserved_micros`, in one transaction that reads them from
 * the rows, not from this process's memory, so any process can return a
 * dead process's slice. Reconciliation does that for slices of leases no
 * longer live (`foldDead`), which is how a dead process's slice counts again.
 *
 * Memory only gates reservations, and conservatively: a slice's free part is
 * its grant less every hold taken from it and every charge settled on it by
 * this process. The lease rule (leases.ts) keeps memory and rows apart: a
 * process whose lease is not known live takes no request, so no other
 * process folds a slice it still reserves from; and a request is inserted
 * only while its slice's row exists, so a slice folded meanwhile funds nothing.
 *
 * Refusal: a take the key row cannot cover first returns the key's slices
 * whose lease has expired (a dead process's slice counts once its lease has
 * expired), then, while other live processes' slices hold an unused part
 * that could cover the request, waits for it: a slice nobody reserved from
 * for `idleReturnMs` gives its unused part back (all of it once no request
 * holds). Only then is the request refused.
 *
 * Lock order: a slice row before its key row, everywhere (a take's give-back,
 * a give-back, a return, a late charge on an orphan). A take's new slice row
 * is inserted after the key row, and nobody else can hold it yet.
 */
import { randomUUID } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import type { DB } from '../db/schema.js';
import { toBigInt, toIsoTimestamp, systemClock, type Clock } from '../db/values.js';

/**
 * Slices are at most this many of the request's amount: what one process may
 * hold that others cannot use (besides the share rule, half the headroom
 * among live leases, which bounds it on a small budget). Each slice costs a
 * take and a return, about ten statements (docs/LEDGER-COST.md): at 256
 * that is a few hundredths of a statement per request.
 */
const MAX_SLICE_REQUESTS = 256n;
/** A slice nobody reserves from for this long is returned. */
const DEFAULT_IDLE_RETURN_MS = 1_000;

export interface SliceRefusal {
  /** Null: the key has no budget (any more); its requests are unfunded. */
  budgetMicros: bigint | null;
  spentMicros: bigint;
  reservedMicros: bigint;
}

interface Slice {
  id: string;
  keyId: string;
  granted: bigint;
  /** Holds of this process's requests still open plus charges settled on it, as this process counts them. */
  used: bigint;
  inFlight: number;
  /** Being returned: nothing more is reserved from it. */
  closing: boolean;
  idle?: NodeJS.Timeout | undefined;
}

export interface SliceBook {
  /** Holds `amount` from a slice of the key (taking one when needed): the slice id, or the key's figures when refused. */
  hold(keyId: string, amount: bigint): Promise<{ sliceId: string } | { refused: SliceRefusal }>;
  /** A hold that was never written (the request's insert failed or found its slice gone). */
  unhold(sliceId: string, amount: bigint, sliceGone?: boolean): void;
  /** A request funded by the slice closed: its hold ended, `charge` of it spent (0 when released). Unknown slices are ignored. */
  ended(sliceId: string, hold: bigint, charge: bigint): void;
  /**
   * A hold whose write may have committed or not (its answer was lost): it
   * stays counted, and nothing more is reserved from the slice, which
   * reconciliation returns from the rows once none of its requests holds.
   * Giving the hold back instead would count it twice if the row exists.
   */
  unsure(sliceId: string): void;
  /** Whether this process reserves from the slice (reconciliation leaves such slices alone). */
  knows(sliceId: string): boolean;
  /** Returns every slice that no open request holds (shutdown). */
  returnAll(): Promise<void>;
}

export interface SliceBookOptions {
  leaseId: string;
  clock?: Clock | undefined;
  idleReturnMs?: number | undefined;
  onError?: ((err: unknown, what: string) => void) | undefined;
}

export function createSliceBook(db: Kysely<DB>, options: SliceBookOptions): SliceBook {
  const clock = options.clock ?? systemClock;
  const idleMs = options.idleReturnMs ?? DEFAULT_IDLE_RETURN_MS;
  const slices = new Map<string, Slice>();
  /** The slice each key reserves from; older slices are returned once their requests end. */
  const current = new Map<string, Slice>();
  /** One take per key at a time: concurrent requests wait for it, then try memory again. */
  const taking = new Map<string, Promise<SliceRefusal | undefined>>();

  const free = (s: Slice) => s.granted - s.used;
  const retire = (s: Slice): void => {
    if (s.closing) return;
    s.closing = true;
    if (current.get(s.keyId) === s) current.delete(s.keyId);
    clearTimeout(s.idle);
    fold(db, s.id)
      .then((done) => {
        if (done) slices.delete(s.id);
      })
      .catch((err: unknown) => {
        // Forgotten here, so this process's next reconciliation round returns it.
        slices.delete(s.id);
        options.onError?.(err, 'budget slice: could not return it; reconciliation will');
      });
  };
  /** What nobody has reserved from for `idleMs` goes back: all of it once no request holds, else its free part. */
  const armIdle = (s: Slice): void => {
    clearTimeout(s.idle);
    if (s.inFlight === 0 && current.get(s.keyId) !== s) return retire(s);
    s.idle = setTimeout(() => {
      if (s.inFlight === 0) retire(s);
      else if (!s.closing && !taking.has(s.keyId) && free(s) > 0n) giveBackFree(s);
    }, idleMs);
    s.idle.unref();
  };
  const giveBackFree = (s: Slice): void => {
    const amount = free(s);
    s.granted -= amount;
    shrink(db, s.id, s.keyId, amount).catch((err: unknown) => {
      s.granted += amount;
      options.onError?.(err, 'budget slice: could not give back its unused part');
    });
  };
  const now = () => toIsoTimestamp(clock());

  async function takeFor(keyId: string, amount: bigint): Promise<SliceRefusal | undefined> {
    const cur = current.get(keyId);
    // What the current slice cannot use goes back with the take, so fragments never strand budget.
    const giveBack = cur && !cur.closing ? free(cur) : 0n;
    if (cur) cur.granted -= giveBack;
    try {
      const out = await take(db, { keyId, amount, giveBack, giveBackFrom: cur?.id, leaseId: options.leaseId, at: toIsoTimestamp(clock()) });
      if ('refused' in out) return out.refused;
      const s: Slice = { id: out.sliceId, keyId, granted: out.granted, used: 0n, inFlight: 0, closing: false };
      slices.set(s.id, s);
      current.set(keyId, s);
      if (cur) armIdle(cur);
      armIdle(s);
      return undefined;
    } catch (err) {
      if (cur) cur.granted += giveBack;
      throw err;
    }
  }

  return {
    async hold(keyId, amount) {
      let waitUntil: number | undefined;
      for (;;) {
        const s = current.get(keyId);
        if (s && !s.closing && free(s) >= amount) {
          s.used += amount;
          s.inFlight++;
          armIdle(s);
          return { sliceId: s.id };
        }
        const pending = taking.get(keyId);
        if (pending) {
          // Another request's take: its slice may cover this one too, so memory is looked at again.
          await pending.catch(() => undefined);
          continue;
        }
        const mine = takeFor(keyId, amount).finally(() => taking.delete(keyId));
        taking.set(keyId, mine);
        const refused = await mine;
        if (!refused) continue;
        if (refused.budgetMicros === null) return { refused };
        // A dead process's slice counts once its lease has expired: returned here, not at the next round.
        if ((await foldExpired(db, keyId, now())) > 0) continue;
        // A live process's unused part comes back within `idleMs`: worth waiting for when it could cover this request.
        waitUntil ??= Date.now() + idleMs + 500;
        const headroom = refused.budgetMicros - refused.spentMicros - refused.reservedMicros;
        if (Date.now() < waitUntil && headroom + (await othersFree(db, keyId, options.leaseId, now())) >= amount) {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        return { refused };
      }
    },
    unhold(sliceId, amount, sliceGone = false) {
      const s = slices.get(sliceId);
      if (!s) return;
      s.used -= amount;
      s.inFlight--;
      if (sliceGone) {
        s.closing = true;
        if (current.get(s.keyId) === s) current.delete(s.keyId);
        if (s.inFlight === 0) slices.delete(s.id);
        return;
      }
      armIdle(s);
    },
    ended(sliceId, hold, charge) {
      const s = slices.get(sliceId);
      if (!s) return;
      s.used -= hold - charge;
      s.inFlight--;
      armIdle(s);
    },
    unsure(sliceId) {
      const s = slices.get(sliceId);
      if (!s || s.closing) return;
      s.closing = true;
      clearTimeout(s.idle);
      if (current.get(s.keyId) === s) current.delete(s.keyId);
    },
    knows: (sliceId) => slices.get(sliceId)?.closing === false,
    async returnAll() {
      for (const s of slices.values()) {
        clearTimeout(s.idle);
        if (s.inFlight === 0) {
          s.closing = true;
          if (await fold(db, s.id)) slices.delete(s.id);
        }
      }
    },
  };
}

/**
 * One transaction: give back what the current slice cannot use, then grant a
 * new slice of about half the key's headroom shared among live leases (at
 * least `amount`, at most MAX_SLICE_REQUESTS of it), or refuse when the
 * headroom cannot cover `amount`.
 */
async function take(
  db: Kysely<DB>,
  input: { keyId: string; amount: bigint; giveBack: bigint; giveBackFrom: string | undefined; leaseId: string; at: string },
): Promise<{ sliceId: string; granted: bigint } | { refused: SliceRefusal }> {
  return db.transaction().execute(async (trx) => {
    // The slice row before the key row, as everywhere (see the lock order above).
    const giveBack = input.giveBack > 0n && input.giveBackFrom !== undefined && (await shrinkSlice(trx, input.giveBackFrom, input.giveBack)) ? input.giveBack : 0n;
    const key = await trx
      .updateTable('api_keys')
      .set({ reserved_micros: sql<bigint>`reserved_micros - ${giveBack}` })
      .where('id', '=', input.keyId)
      .returning(['budget_micros', 'spent_micros', 'reserved_micros'])
      .executeTakeFirst();
    if (!key) throw new Error(`no key row for key id ${JSON.stringify(input.keyId)}`);
    const budget = key.budget_micros === null ? null : toBigInt(key.budget_micros);
    const spent = toBigInt(key.spent_micros);
    const reserved = toBigInt(key.reserved_micros);
    // A key whose budget was removed: its requests are unfunded (the ledger's other path).
    if (budget === null) return { refused: { budgetMicros: null, spentMicros: spent, reservedMicros: reserved } };
    const headroom = budget - spent - reserved;
    if (headroom < input.amount) return { refused: { budgetMicros: budget, spentMicros: spent, reservedMicros: reserved } };
    const live = await trx.selectFrom('leases').select(sql<bigint>`count(*)`.as('n')).where('expires_at', '>', input.at).executeTakeFirst();
    const share = headroom / (2n * (live ? toBigInt(live.n) : 1n) || 1n);
    const granted = min(headroom, max(input.amount, min(share, input.amount * MAX_SLICE_REQUESTS)));
    const sliceId = randomUUID();
    await trx.updateTable('api_keys').set({ reserved_micros: sql<bigint>`reserved_micros + ${granted}` }).where('id', '=', input.keyId).execute();
    await trx.insertInto('budget_slices').values({ id: sliceId, key_id: input.keyId, lease_id: input.leaseId, granted_micros: granted, created_at: input.at }).execute();
    return { sliceId, granted };
  });
}

/** Lowers a slice's grant; false when its row is gone (returned meanwhile: nothing to give back). */
async function shrinkSlice(trx: Transaction<DB>, sliceId: string, amount: bigint): Promise<boolean> {
  const row = await trx.updateTable('budget_slices').set({ granted_micros: sql<bigint>`granted_micros - ${amount}` }).where('id', '=', sliceId).returning('id').executeTakeFirst();
  return row !== undefined;
}

/** A live slice's unused part back to its key. */
async function shrink(db: Kysely<DB>, sliceId: string, keyId: string, amount: bigint): Promise<void> {
  await db.transaction().execute(async (trx) => {
    if (!(await shrinkSlice(trx, sliceId, amount))) return;
    await trx.updateTable('api_keys').set({ reserved_micros: sql<bigint>`reserved_micros - ${amount}` }).where('id', '=', keyId).execute();
  });
}

/** Returns the key's slices whose lease has expired or is gone (those no request holds); answers how many. */
async function foldExpired(db: Kysely<DB>, keyId: string, at: string): Promise<number> {
  const rows = await db
    .selectFrom('budget_slices')
    .select('id')
    .where('key_id', '=', keyId)
    .where((eb) => eb.not(eb.exists(eb.selectFrom('leases').select('leases.id').whereRef('leases.id', '=', 'budget_slices.lease_id').where('leases.expires_at', '>', at))))
    .execute();
  let n = 0;
  for (const r of rows) if (await fold(db, r.id)) n++;
  return n;
}

/** What other live processes' slices of the key could still fund: grants less their requests' holds and charges. */
async function othersFree(db: Kysely<DB>, keyId: string, leaseId: string, at: string): Promise<bigint> {
  const row = await db
    .selectFrom('budget_slices as s')
    .select(
      sql<bigint>`cast(coalesce(sum(s.granted_micros - (select coalesce(sum(case when r.status in ('reserved', 'submitted') then r.reserved_micros when r.status = 'settled' then r.charge_micros else 0 end), 0) from requests r where r.slice_id = s.id)), 0) as bigint)`.as('free'),
    )
    .where('s.key_id', '=', keyId)
    .where('s.lease_id', '<>', leaseId)
    .where((eb) => eb.exists(eb.selectFrom('leases').select('leases.id').whereRef('leases.id', '=', 's.lease_id').where('leases.expires_at', '>', at)))
    .executeTakeFirst();
  return row ? toBigInt(row.free) : 0n;
}

/**
 * Returns a slice no open request holds: its settled requests' charges are
 * spent, its grant is no longer reserved. False (nothing changed) while a
 * request it funded still holds, or when it was already returned.
 */
export async function fold(db: Kysely<DB>, sliceId: string): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    const slice = await trx.deleteFrom('budget_slices').where('id', '=', sliceId).returning(['key_id', 'granted_micros']).executeTakeFirst();
    if (!slice) return false;
    const sums = await trx
      .selectFrom('requests')
      .select([
        sql<bigint>`cast(coalesce(sum(case when status = 'settled' then charge_micros else 0 end), 0) as bigint)`.as('charged'),
        sql<bigint>`count(case when status in ('reserved', 'submitted') then 1 end)`.as('holding'),
      ])
      .where('slice_id', '=', sliceId)
      .executeTakeFirstOrThrow();
    if (toBigInt(sums.holding) > 0n) throw new StillHolding();
    await trx
      .updateTable('api_keys')
      .set({ reserved_micros: sql<bigint>`reserved_micros - ${toBigInt(slice.granted_micros)}`, spent_micros: sql<bigint>`spent_micros + ${toBigInt(sums.charged)}` })
      .where('id', '=', slice.key_id)
      .execute();
    return true;
  }).catch((err: unknown) => {
    if (err instanceof StillHolding) return false;
    throw err;
  });
}

/** Rolls a fold back: a request the slice funded still holds. */
class StillHolding extends Error {}

/**
 * The charge of an orphaned request settled late: counted by its slice's
 * fold while the slice row exists (locked here, so a fold waits for this
 * transaction), else on the key row at once.
 */
export async function chargeLate(trx: Transaction<DB>, sliceId: string | null, keyId: string, charge: bigint): Promise<void> {
  const slice = sliceId === null ? undefined : await trx.updateTable('budget_slices').set({ granted_micros: sql<bigint>`granted_micros` }).where('id', '=', sliceId).returning('id').executeTakeFirst();
  if (slice) return;
  await trx.updateTable('api_keys').set({ spent_micros: sql<bigint>`spent_micros + ${charge}` }).where('id', '=', keyId).execute();
}

/**
 * Reconciliation's part: returns the slices of leases not live (`live`: the
 * round's live leases) and this process's own slices it no longer reserves
 * from, each once no request it funded holds. Answers how many were returned.
 */
export async function foldOrphanSlices(db: Kysely<DB>, input: { live: readonly string[]; ownLeaseId: string | undefined; book?: SliceBook | undefined }): Promise<number> {
  // One row per process and budgeted key in use: read whole.
  const rows = await db.selectFrom('budget_slices').select(['id', 'lease_id']).execute();
  let n = 0;
  for (const r of rows) {
    const mine = r.lease_id === input.ownLeaseId;
    if (mine ? input.book?.knows(r.id) : input.live.includes(r.lease_id)) continue;
    if (await fold(db, r.id)) n++;
  }
  return n;
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
