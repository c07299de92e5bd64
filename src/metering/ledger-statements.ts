import { sql, type ExpressionBuilder, type Insertable, type Kysely, type OnConflictBuilder } from 'kysely';
import { prepared } from '../db/prepared.js';
import type { DB, JobStatus, RequestStatus, RequestsTable } from '../db/schema.js';
import { JOB_COLUMNS, REQUEST_COLUMNS } from './records.js';

/** A job in these states takes a completion: a result from fal is a fact and overrides an earlier guess. */
export const COMPLETABLE: JobStatus[] = ['submitting', 'submitted', 'failed', 'cancelled', 'lost'];

/** A request in these states holds its reservation on its key. */
export const HOLDING: RequestStatus[] = ['reserved', 'submitted'];

/**
 * The statements every image request's ledger writes run (reserve,
 * recordSubmit, settleJobs), compiled once per ledger with
 * src/db/prepared.ts, which holds the figure for why. Each runs inside the
 * ledger's Kysely transaction like any other query; the ledger's other
 * statements are built where they run.
 */
export function ledgerStatements(ownLeaseId?: string) {
  return { ...openingStatements(), ...closingStatements(ownLeaseId) };
}

/**
 * A request's closing writes, by a process that holds a lease, touch only a
 * request it owns (or one written without a lease): once another process
 * has taken the request over (reconcile.ts), the first one's late writes
 * change nothing.
 */
export function ownedBy<Q extends { where: (...args: any[]) => Q }>(q: Q, ownLeaseId: string | undefined): Q {
  if (ownLeaseId === undefined) return q;
  return q.where((eb: any) => eb.or([eb('lease_id', 'is', null), eb('lease_id', '=', ownLeaseId)]));
}


export type JobValues = { images: number; pixels: number; unitsEstimate: string; unitsFal: string | null; cost: bigint; estimated: number; at: string; id: string; otherIds: string | null };
type SettleValues = { requestId: string; charge: bigint; credits: bigint; images: number; at: string };

const REQUEST_VALUE_COLUMNS = ['id', 'client_request_id', 'model', 'endpoint', 'end_user', 'pricing_json', 'status', 'reserved_micros', 'idempotency_key', 'created_at', 'lease_id'] as const;

/** A reservation's request row as selected values, in REQUEST_VALUE_COLUMNS order, for an INSERT … SELECT (the key id and funding come from the row selected). */
function requestValues(p: Insertable<RequestsTable>) {
  return [
    sql<string>`${p.id}`.as('id'),
    sql<string | null>`${p.client_request_id ?? null}`.as('client_request_id'),
    sql<string>`${p.model}`.as('model'),
    sql<string>`${p.endpoint}`.as('endpoint'),
    sql<string | null>`${p.end_user}`.as('end_user'),
    sql<string | null>`${p.pricing_json}`.as('pricing_json'),
    sql<string>`'reserved'`.as('status'),
    sql<bigint>`${p.reserved_micros}`.as('reserved_micros'),
    sql<string | null>`${p.idempotency_key}`.as('idempotency_key'),
    sql<string>`${p.created_at}`.as('created_at'),
    sql<string | null>`${p.lease_id}`.as('lease_id'),
  ] as const;
}

export type SlicedValues = Insertable<RequestsTable> & { slice_id: string };

/**
 * The conflict target of every reservation insert: the per-key label's
 * unique index. It names `WHERE client_request_id IS NOT NULL`, which the
 * full index (migration 0009) satisfies and a partial one would too, so the
 * index can become partial once no process older than 0007 is left. A label
 * the key already used inserts nothing (and returns no row); any other
 * conflict (our own id) still fails the statement.
 */
const labelTaken = (oc: OnConflictBuilder<DB, 'requests'>) => oc.columns(['key_id', 'client_request_id']).where('client_request_id', 'is not', null).doNothing();

/** The request row of a key without a budget, written only while the key exists and has none. */
export function unfundedInsert(q: Pick<Kysely<DB>, 'insertInto'>, p: Insertable<RequestsTable>) {
  return (
    q
      .insertInto('requests')
      // In the order of the SELECT below: INSERT … SELECT matches by position.
      .columns([...REQUEST_VALUE_COLUMNS, 'key_id', 'funded_by'])
      .expression((eb) =>
        eb
          .selectFrom('api_keys')
          .select([...requestValues(p), 'api_keys.id as key_id', sql<string>`'none'`.as('funded_by')])
          .where('api_keys.id', '=', p.key_id)
          .where('api_keys.budget_micros', 'is', null),
      )
      .onConflict(labelTaken)
      .returning('id')
  );
}

/** The request row of a slice-funded hold, written only while the slice's row exists. */
export function slicedInsert(q: Pick<Kysely<DB>, 'insertInto'>, p: SlicedValues) {
  return q
    .insertInto('requests')
    .columns([...REQUEST_VALUE_COLUMNS, 'key_id', 'funded_by', 'slice_id'])
    .expression((eb) =>
      eb
        .selectFrom('budget_slices')
        .select([...requestValues(p), 'budget_slices.key_id as key_id', sql<string>`'slice'`.as('funded_by'), 'budget_slices.id as slice_id'])
        .where('budget_slices.id', '=', p.slice_id)
        .where('budget_slices.key_id', '=', p.key_id),
    )
    .onConflict(labelTaken)
    .returning('id');
}

/** reserve and recordSubmit. */
function openingStatements() {
  return {
    insertRequest: prepared((q: Kysely<DB>, p: Insertable<RequestsTable>) =>
      q
        .insertInto('requests')
        .values({
          id: p.id,
          client_request_id: p.client_request_id ?? null,
          key_id: p.key_id,
          model: p.model,
          endpoint: p.endpoint,
          end_user: p.end_user,
          pricing_json: p.pricing_json,
          status: 'reserved',
          reserved_micros: p.reserved_micros,
          idempotency_key: p.idempotency_key,
          created_at: p.created_at,
          lease_id: p.lease_id,
        })
        .onConflict(labelTaken)
        .returning('id'),
    ),
    // A key without a budget: the request row is its whole reservation. The
    // SELECT proves the key exists and has no budget in the same statement,
    // reading the key row without locking it (docs/LEDGER-COST.md).
    insertUnfunded: prepared((q: Kysely<DB>, p: Insertable<RequestsTable>) => unfundedInsert(q, p)),
    // A key with a budget on PostgreSQL: the hold was taken in memory from a
    // slice (budget-slices.ts); the row is written only while that slice's
    // row exists, so a slice returned meanwhile funds nothing.
    insertSliced: prepared((q: Kysely<DB>, p: SlicedValues) => slicedInsert(q, p)),
    // The budget check and the hold are one statement: under concurrency
    // PostgreSQL re-evaluates the WHERE against the row as committed by
    // whoever held its lock, and SQLite writers are serialised, so no two
    // reservations can both see the same headroom.
    hold: prepared((q: Kysely<DB>, p: { amount: bigint; keyId: string }) =>
      q
        .updateTable('api_keys')
        .set({ reserved_micros: sql<bigint>`reserved_micros + ${p.amount}` })
        .where('id', '=', p.keyId)
        .where((eb) => eb.or([eb('budget_micros', 'is', null), eb(sql<bigint>`spent_micros + reserved_micros + ${p.amount}`, '<=', eb.ref('budget_micros'))]))
        .returning('id'),
    ),
    // Every job's row is written with its reservation, before its submit leaves.
    insertJob: prepared((q: Kysely<DB>, p: { id: string; requestId: string; endpoint: string; inputHash: string | null; estimate: bigint | null; at: string }) =>
      q.insertInto('upstream_jobs').values({ id: p.id, request_id: p.requestId, endpoint: p.endpoint, input_hash: p.inputHash, estimate_micros: p.estimate, kind: 'job', status: 'submitting', created_at: p.at }),
    ),
    recordSubmit: prepared((q: Kysely<DB>, p: { id: string; falRequestId: string }) =>
      q
        .updateTable('upstream_jobs')
        .set({ fal_request_id: p.falRequestId, status: 'submitted' })
        .where('id', '=', p.id)
        .where('status', '=', 'submitting')
        .returning(JOB_COLUMNS),
    ),
  };
}

/** A settle's values, with the request's upstream cost (its jobs' sum, as of the statement) refreshed in the same UPDATE. */
function settled(p: SettleValues) {
  return { status: 'settled' as const, charge_micros: p.charge, credits: p.credits, images: p.images, error_code: null, settled_at: p.at };
}

/** The sum of a request's jobs' upstream costs (failed ones and strays included). */
function jobsCost(eb: ExpressionBuilder<DB, 'requests'>, requestId: string) {
  return eb.selectFrom('upstream_jobs').select(sql<bigint>`coalesce(sum(upstream_cost_micros), 0)`.as('cost')).where('upstream_jobs.request_id', '=', requestId);
}

/** A job row as fal's result completes it; `errorCode` is kept only on a job given up before (completeLostJob). */
export function completedRow(p: JobValues, errorCode: string | null) {
  return {
    images: p.images,
    pixels: p.pixels,
    units_estimate: p.unitsEstimate,
    units_fal: p.unitsFal,
    upstream_cost_micros: p.cost,
    cost_estimated: p.estimated,
    fal_other_ids: p.otherIds,
    error_code: errorCode,
    fal_last_word: null,
    completed_at: p.at,
    status: 'completed' as const,
  };
}

/** completeJob and settle (settleJobs is both). */
function closingStatements(ownLeaseId: string | undefined) {
  return {
    // A result from fal is a fact and overrides an earlier guess (a cancel
    // can lose the race with completion; a job given up as lost may turn up).
    completeJob: prepared((q: Kysely<DB>, p: JobValues) =>
      q
        .updateTable('upstream_jobs')
        .set(completedRow(p, null))
        .where('id', '=', p.id)
        .where('status', 'in', COMPLETABLE)
        .returning(JOB_COLUMNS),
    ),
    settleHolding: prepared((q: Kysely<DB>, p: SettleValues) =>
      ownedBy(
        q
          .updateTable('requests')
          .set((eb) => ({ ...settled(p), upstream_cost_micros: jobsCost(eb, p.requestId) }))
          .where('id', '=', p.requestId)
          .where('status', 'in', HOLDING),
        ownLeaseId,
      ).returning(REQUEST_COLUMNS),
    ),
    settleOrphan: prepared((q: Kysely<DB>, p: SettleValues) =>
      ownedBy(
        q
          .updateTable('requests')
          .set((eb) => ({ ...settled(p), upstream_cost_micros: jobsCost(eb, p.requestId) }))
          .where('id', '=', p.requestId)
          .where('status', '=', 'orphaned'),
        ownLeaseId,
      ).returning(REQUEST_COLUMNS),
    ),
    // A request's upstream cost is the sum of its jobs' (failed ones and strays included), refreshed after every job write.
    refreshCost: prepared((q: Kysely<DB>, p: { requestId: string }) =>
      q
        .updateTable('requests')
        .set((eb) => ({ upstream_cost_micros: jobsCost(eb, p.requestId) }))
        .where('id', '=', p.requestId),
    ),
    chargeKey: prepared((q: Kysely<DB>, p: { keyId: string; hold: bigint; charge: bigint }) =>
      q
        .updateTable('api_keys')
        .set({ reserved_micros: sql<bigint>`reserved_micros - ${p.hold}`, spent_micros: sql<bigint>`spent_micros + ${p.charge}` })
        .where('id', '=', p.keyId),
    ),
  };
}

export type LedgerStatements = ReturnType<typeof ledgerStatements>;

