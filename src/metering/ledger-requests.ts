/**
 * The ledger's writes that close one request's row (src/metering/ledger.ts
 * runs each inside its Kysely transaction): settle it (the charge), release
 * it (uncharged), or mark it orphaned. Each is a conditional UPDATE on the
 * row's current status, and, for a ledger holding a lease, on the row still
 * naming that lease (or none): a repeat, or a write by a process whose
 * request another took over, changes nothing.
 */
import { sql, type Kysely, type Transaction } from 'kysely';
import type { DB } from '../db/schema.js';
import { toBigInt, toNumber, type Clock } from '../db/values.js';
import { ownedBy, HOLDING, type LedgerStatements } from './ledger-statements.js';
import { chargeLate } from './budget-slices.js';
import type { FundedBy } from '../db/schema.js';
import type { CompleteJobInput } from './ledger-jobs.js';
import { enqueueOutboxEvent, type OutboxEventInput } from './outbox-store.js';
import { requestOrThrow, toRequest, type RequestRecord } from './records.js';

export interface SettleInput {
  requestId: string;
  chargeMicros: bigint;
  credits: bigint | number;
  images: number;
  /** The billing event, written in the same transaction as the charge. */
  outboxEvent?: SettleOutboxEvent | undefined;
}

export interface SettleOutboxEvent extends Omit<OutboxEventInput, 'keyId' | 'payload'> {
  /**
   * The event body, or a function that makes it from the request row as
   * settled: inside the transaction, so the event carries exactly the
   * `settled_at`, key and charge the ledger holds, with no second read.
   */
  payload: unknown;
}

export interface SettleResult {
  /** True when this call settled the request; false when it was already closed (nothing changed). */
  settled: boolean;
  request: RequestRecord;
}

export interface ReleaseInput {
  requestId: string;
  status: 'released' | 'failed';
  errorCode?: string | null | undefined;
  /** Completed jobs to record with their cost in the same transaction: upstream cost the caller is not charged for. */
  jobs?: readonly CompleteJobInput[] | undefined;
}

export interface ReleaseResult {
  released: boolean;
  request: RequestRecord;
}

/**
 * A slice-funded request's hold ended in a transaction: applied to the
 * process's slice book only after that transaction commits (ledger.ts).
 */
export interface SliceEnd {
  sliceId: string;
  hold: bigint;
  charge: bigint;
}

export async function settle(trx: Transaction<DB>, q: LedgerStatements, input: SettleInput, at: string, clock: Clock, ended: SliceEnd[] = []): Promise<SettleResult> {
  const charge = toBigInt(input.chargeMicros);
  if (charge < 0n) throw new RangeError('chargeMicros must not be negative');
  const values = {
    requestId: input.requestId,
    charge,
    credits: toBigInt(input.credits),
    images: toNumber(input.images),
    at,
  };
  // Each settling UPDATE refreshes the request's upstream cost from its jobs as it settles it.
  let row = (await q.settleHolding.run(trx, values)).rows[0];
  const orphan = row === undefined;
  if (!row) {
    row = (await q.settleOrphan.run(trx, values)).rows[0];
    if (!row) {
      // Nothing to settle: the jobs just recorded still count in the request's cost.
      await q.refreshCost.run(trx, { requestId: input.requestId });
      return { settled: false, request: await requestOrThrow(trx, input.requestId) };
    }
  }
  // The row as settled: the key update below does not touch it.
  const request = toRequest(row);
  const funded: FundedBy = row.funded_by;
  // An orphan gave its hold back when it was orphaned.
  const hold = orphan ? 0n : toBigInt(row.reserved_micros);
  if (funded === 'key') await q.chargeKey.run(trx, { keyId: request.keyId, hold, charge });
  else if (funded === 'slice' && orphan) await chargeLate(trx, row.slice_id, request.keyId, charge);
  else if (funded === 'slice') ended.push({ sliceId: row.slice_id ?? '', hold, charge });
  // A billing event is inserted after its key row is written on purpose:
  // that row lock orders concurrent settles of one key, so a key's outbox
  // sequence numbers follow commit order and per-key delivery cannot be
  // overtaken by a transaction that committed later. So with the webhook on,
  // a request whose hold is not on the key row still writes it (changing
  // nothing): the one per-key queue a deployment with a billing webhook keeps
  // (docs/LEDGER-COST.md).
  if (input.outboxEvent && funded !== 'key') await q.chargeKey.run(trx, { keyId: request.keyId, hold: 0n, charge: 0n });
  if (input.outboxEvent) {
    const { eventId, type, payload } = input.outboxEvent;
    const body: unknown = typeof payload === 'function' ? (payload as (r: RequestRecord) => unknown)(request) : payload;
    await enqueueOutboxEvent(trx, { eventId, type, payload: body, keyId: request.keyId }, clock);
  }
  return { settled: true, request };
}

export async function release(trx: Transaction<DB>, input: ReleaseInput, at: string, own: string | undefined, ended: SliceEnd[] = []): Promise<ReleaseResult> {
  const closed = ownedBy(
    trx
      .updateTable('requests')
      .set({ status: input.status, error_code: input.errorCode ?? null, settled_at: at })
      .where('id', '=', input.requestId),
    own,
  );
  const fromHolding = await closed.where('status', 'in', HOLDING).returning(['key_id', 'reserved_micros', 'funded_by', 'slice_id']).executeTakeFirst();
  if (fromHolding) {
    await returnHold(trx, fromHolding, ended);
    return { released: true, request: await requestOrThrow(trx, input.requestId) };
  }
  // An orphan resolved as not billed: close it; its hold is already back.
  const fromOrphan = await closed.where('status', '=', 'orphaned').returning('id').executeTakeFirst();
  return { released: fromOrphan !== undefined, request: await requestOrThrow(trx, input.requestId) };
}

export async function markOrphaned(trx: Transaction<DB>, requestId: string, own: string | undefined, ended: SliceEnd[] = []): Promise<boolean> {
  const row = await ownedBy(
    trx
      .updateTable('requests')
      .set({ status: 'orphaned', error_code: 'orphaned' })
      .where('id', '=', requestId)
      .where('status', 'in', HOLDING),
    own,
  )
    .returning(['key_id', 'reserved_micros', 'funded_by', 'slice_id'])
    .executeTakeFirst();
  if (!row) {
    await requestOrThrow(trx, requestId);
    return false;
  }
  await returnHold(trx, row, ended);
  return true;
}

/** A hold ends uncharged: back on the key row, back to its slice once committed, or nothing to return (no budget). */
async function returnHold(trx: Transaction<DB>, row: { key_id: string; reserved_micros: bigint; funded_by: FundedBy; slice_id: string | null }, ended: SliceEnd[]): Promise<void> {
  const hold = toBigInt(row.reserved_micros);
  if (row.funded_by === 'slice') ended.push({ sliceId: row.slice_id ?? '', hold, charge: 0n });
  if (row.funded_by !== 'key') return;
  await trx
    .updateTable('api_keys')
    .set({ reserved_micros: sql<bigint>`reserved_micros - ${hold}` })
    .where('id', '=', row.key_id)
    .execute();
}

/** See `Ledger.adopt`. */
export async function adopt(db: Kysely<DB>, input: { requestId: string; fromLeaseId: string; toLeaseId: string }, at: string): Promise<boolean> {
  const row = await db
    .updateTable('requests')
    .set({ lease_id: input.toLeaseId })
    .where('id', '=', input.requestId)
    .where('lease_id', '=', input.fromLeaseId)
    .where('status', 'in', HOLDING)
    // In the same statement: an owner that renewed meanwhile keeps its request.
    .where((eb) => eb.not(eb.exists(eb.selectFrom('leases').select('leases.id').where('leases.id', '=', input.fromLeaseId).where('leases.expires_at', '>', at))))
    .returning('id')
    .executeTakeFirst();
  return row !== undefined;
}
