/**
 * A request's reservation (src/metering/ledger.ts `reserve`), by what funds
 * its hold (docs/LEDGER-COST.md):
 *
 * - a key without a budget: one INSERT … SELECT that writes the request row
 *   only while the key exists and has no budget; no shared row is written;
 * - a key with a budget, on a ledger with a slice book (PostgreSQL under a
 *   lease): the hold is taken in memory from a slice of the key's budget
 *   (budget-slices.ts) and the row written while that slice exists;
 * - a key with a budget otherwise (SQLite, a ledger without a lease): the
 *   budget check and the hold are one UPDATE of the key row, in the
 *   request's transaction.
 *
 * Every job's row is written in the request row's transaction, before its
 * submit leaves.
 */
import type { Kysely, Transaction } from 'kysely';
import type { DB } from '../db/schema.js';
import { toBigInt } from '../db/values.js';
import type { SliceBook } from './budget-slices.js';
import { jobIdFor } from './ledger-jobs.js';
import type { LedgerStatements } from './ledger-statements.js';
import type { PgWrites, ReservationRow } from './ledger-pg.js';
import { refusedWhole } from './group-commit.js';
import type { ReserveInput, ReserveResult } from './ledger.js';

export class UnknownKeyError extends Error {
  constructor(readonly keyId: string) {
    super(`no key row for key id ${JSON.stringify(keyId)}; static keys need keys.ensureStatic() first`);
    this.name = 'UnknownKeyError';
  }
}

export interface ReserveContext {
  db: Kysely<DB>;
  q: LedgerStatements;
  /** PostgreSQL: each reservation is one statement (ledger-pg.ts) instead of a transaction. */
  pg: PgWrites | undefined;
  now: () => string;
  leaseId: string | null;
  slices: SliceBook | undefined;
  /** Keys this process found to have a budget: their reservations skip the unfunded attempt. */
  budgeted: Set<string>;
}

type RowValues = ReturnType<typeof rowValues>;

export async function reserve(ctx: ReserveContext, input: ReserveInput): Promise<ReserveResult> {
  const amount = input.maxChargeMicros;
  if (amount < 0n) throw new RangeError('maxChargeMicros must not be negative');
  if (input.inputHashes && input.inputHashes.length !== (input.jobs ?? 0)) throw new RangeError(`inputHashes has ${input.inputHashes.length} entries for ${input.jobs ?? 0} jobs`);
  if (input.estimates && input.estimates.length !== (input.jobs ?? 0)) throw new RangeError(`estimates has ${input.estimates.length} entries for ${input.jobs ?? 0} jobs`);
  const values = rowValues(input, ctx.now(), ctx.leaseId);
  if (!ctx.budgeted.has(input.keyId)) {
    const out = await reserveUnfunded(ctx, input, values);
    if (out !== 'budgeted') return out;
    ctx.budgeted.add(input.keyId);
  }
  if (ctx.slices) return reserveSliced(ctx, ctx.slices, input, values);
  try {
    return await ctx.db.transaction().execute((trx) => reserveOnKey(trx, ctx.q, input, values));
  } catch (error) {
    // A key with no row fails the request insert on its foreign key, in
    // each dialect's own words; say what it means.
    if (!(error instanceof UnknownKeyError)) {
      const key = await ctx.db.selectFrom('api_keys').select('id').where('id', '=', input.keyId).executeTakeFirst().catch(() => null);
      if (key === undefined) throw new UnknownKeyError(input.keyId);
    }
    throw error;
  }
}

function rowValues(input: ReserveInput, at: string, leaseId: string | null) {
  return {
    id: input.requestId,
    client_request_id: input.clientRequestId ?? null,
    key_id: input.keyId,
    model: input.model,
    endpoint: input.endpoint,
    end_user: input.user ?? null,
    pricing_json: input.pricing ?? null,
    status: 'reserved' as const,
    reserved_micros: input.maxChargeMicros,
    idempotency_key: input.idempotencyKey ?? null,
    created_at: at,
    lease_id: leaseId,
  };
}

/** Whether the key already has a request under the caller's label: the one conflict the inserts skip (our own id colliding fails them). */
async function labelTaken(db: Kysely<DB>, input: ReserveInput): Promise<boolean> {
  if (input.clientRequestId == null) return false;
  const row = await db.selectFrom('requests').select('id').where('key_id', '=', input.keyId).where('client_request_id', '=', input.clientRequestId).executeTakeFirst();
  return row !== undefined;
}

async function insertJobs(trx: Transaction<DB>, q: LedgerStatements, input: ReserveInput, at: string): Promise<void> {
  for (let i = 0; i < (input.jobs ?? 0); i++) {
    await q.insertJob.run(trx, { id: jobIdFor(input.requestId, i), requestId: input.requestId, endpoint: input.endpoint, inputHash: input.inputHashes?.[i] ?? null, estimate: input.estimates?.[i] ?? null, at });
  }
}

/** A reservation as the single-statement reservation takes it. */
function reservationRow(input: ReserveInput, values: RowValues, sliceId: string | undefined): ReservationRow {
  const jobs = Array.from({ length: input.jobs ?? 0 }, (_, i) => ({ id: jobIdFor(input.requestId, i), inputHash: input.inputHashes?.[i] ?? null, estimate: input.estimates?.[i] ?? null }));
  return { ...values, slice_id: sliceId, jobs };
}

/** The request row and its jobs' rows, together or not at all; true when written. */
async function writeReservation(ctx: ReserveContext, input: ReserveInput, values: RowValues, sliceId?: string): Promise<boolean> {
  if (ctx.pg) return ctx.pg.reserve(reservationRow(input, values, sliceId));
  return ctx.db.transaction().execute(async (trx) => {
    const inserted = sliceId === undefined ? await ctx.q.insertUnfunded.run(trx, values) : await ctx.q.insertSliced.run(trx, { ...values, slice_id: sliceId });
    if (inserted.rows.length === 0) return false;
    await insertJobs(trx, ctx.q, input, values.created_at);
    return true;
  });
}

/** The unfunded insert; `budgeted` when it wrote nothing because the key has a budget. */
async function reserveUnfunded(ctx: ReserveContext, input: ReserveInput, values: RowValues): Promise<ReserveResult | 'budgeted'> {
  if (await writeReservation(ctx, input, values)) return { ok: true };
  // Why nothing was written: read only on this rare path.
  if (await labelTaken(ctx.db, input)) return { ok: false, reason: 'request_id_taken' };
  const key = await ctx.db.selectFrom('api_keys').select('budget_micros').where('id', '=', input.keyId).executeTakeFirst();
  if (!key) throw new UnknownKeyError(input.keyId);
  return 'budgeted';
}

async function reserveSliced(ctx: ReserveContext, slices: SliceBook, input: ReserveInput, values: RowValues): Promise<ReserveResult> {
  const amount = input.maxChargeMicros;
  // A slice returned between the hold and the insert (its process's lease
  // lapsed) funds nothing: the hold is taken again, from a new slice.
  for (let attempt = 0; attempt < 3; attempt++) {
    const held = await slices.hold(input.keyId, amount);
    if ('refused' in held) {
      if (held.refused.budgetMicros !== null) return { ok: false, reason: 'insufficient_quota', ...held.refused, budgetMicros: held.refused.budgetMicros };
      // The budget was removed: the key's requests are unfunded again.
      ctx.budgeted.delete(input.keyId);
      const out = await reserveUnfunded(ctx, input, values);
      if (out !== 'budgeted') return out;
      continue;
    }
    let written: boolean;
    try {
      written = await writeReservation(ctx, input, values, held.sliceId);
    } catch (error) {
      // Only a refusal wrote nothing for certain; after a lost answer the row may hold the amount.
      if (ctx.pg === undefined || refusedWhole(error)) slices.unhold(held.sliceId, amount);
      else slices.unsure(held.sliceId);
      throw error;
    }
    if (written) return { ok: true };
    const taken = await labelTaken(ctx.db, input);
    slices.unhold(held.sliceId, amount, !taken);
    if (taken) return { ok: false, reason: 'request_id_taken' };
  }
  throw new Error(`budget slices of key ${input.keyId} kept being returned while a request reserved from them`);
}

async function reserveOnKey(trx: Transaction<DB>, q: LedgerStatements, input: ReserveInput, values: RowValues): Promise<ReserveResult> {
  const amount = input.maxChargeMicros;
  // The request row first, the key row last: on PostgreSQL the key's row
  // lock is then held only from the hold to the commit, and every request of
  // one key queues on that lock, so its length bounds a key's throughput.
  const inserted = await q.insertRequest.run(trx, values);
  if (inserted.rows.length === 0) return { ok: false, reason: 'request_id_taken' };
  const held = await q.hold.run(trx, { amount, keyId: input.keyId });
  if (held.rows.length > 0) {
    await insertJobs(trx, q, input, values.created_at);
    return { ok: true };
  }
  // Refused: the request row goes again in the same transaction, so the
  // attempt commits nothing and the caller's label stays free.
  await trx.deleteFrom('requests').where('id', '=', input.requestId).execute();
  const key = await trx.selectFrom('api_keys').select(['budget_micros', 'spent_micros', 'reserved_micros']).where('id', '=', input.keyId).executeTakeFirst();
  if (!key) throw new UnknownKeyError(input.keyId);
  return {
    ok: false,
    reason: 'insufficient_quota',
    budgetMicros: toBigInt(key.budget_micros ?? 0n),
    spentMicros: toBigInt(key.spent_micros),
    reservedMicros: toBigInt(key.reserved_micros),
  };
}
