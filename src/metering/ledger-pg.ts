/**
 * The ledger's writes on PostgreSQL for the request path, one statement each
 * for any number of requests (group-commit.ts sends the writes that queued
 * together as one), sent without `BEGIN`/`COMMIT` (docs/LEDGER-COST.md): a
 * single statement is its own transaction, so its data-modifying CTEs
 * commit together or not at all, exactly as the multi-statement
 * transactions they stand for (src/metering/ledger-statements.ts, which
 * SQLite runs: it has no data-modifying CTEs).
 *
 * - reserve: each request row and, only when it was written, its job rows;
 * - recordSubmit: fal's id on each job still `submitting`;
 * - settle, for the common case only: a request still holding its
 *   reservation, owned by this process, whose hold is not on its key row,
 *   settled without a billing event. Each request's UPDATE decides (it locks
 *   the row and re-checks those conditions on the row as committed by
 *   whoever held it before); its jobs are written only when it settled the
 *   request, so anything else changes nothing here and goes through the
 *   transaction, which handles every case.
 *
 * Each request's rows are decided by conditions on that request's rows
 * alone, so a request's outcome is the same in a batch as alone.
 *
 * Plans. These statements run on connections that keep each statement's
 * generic plan and never choose a table scan (GROUPED_WRITE_SETTINGS in
 * src/db/database.ts; docs/LEDGER-COST.md, "Plans"). A generic plan is made
 * once, perhaps while the tables are empty, so each statement is written
 * for its index to be the primary key whatever the tables hold later:
 * - each list of values ends in `limit cardinality(…)`, which drops no row
 *   but makes the planner count the list as one row (it cannot see a
 *   parameter's length), so a join probes the key once per value;
 * - a table's rows are reached only by a join of its key to a list (a
 *   condition such as `id = any($ids)` beside it made the planner count the
 *   matching rows as one and read them another way);
 * - every status is a parameter, so no partial index can stand in for the
 *   primary key.
 * test/metering/ledger-pg.test.ts checks the plans on a new schema.
 *
 * Every statement of one command sees the same snapshot and a CTE cannot
 * see another's writes, only their RETURNING rows: a settled request's cost
 * is its jobs' as they stand, each job the statement completes counted at
 * the cost it writes.
 */
import { sql, type Kysely, type RawBuilder, type Selectable } from 'kysely';
import { prepared } from '../db/prepared.js';
import type { DB, UpstreamJobsTable, RequestsTable } from '../db/schema.js';
import { toBigInt, toNumber } from '../db/values.js';
import { createGroup, type GroupOptions } from './group-commit.js';
import { completeResult, completionValues, type CompleteJobInput, type CompleteJobResult } from './ledger-jobs.js';
import type { SettleInput, SettleResult, SliceEnd } from './ledger-requests.js';
import { COMPLETABLE, HOLDING } from './ledger-statements.js';
import { JOB_COLUMNS, REQUEST_COLUMNS, jobOrThrow, toJob, toRequest, type JobRecord } from './records.js';

/** A reservation's request row, as ledger-reserve.ts builds it, and what funds it. */
export interface ReservationRow {
  id: string;
  client_request_id: string | null;
  key_id: string;
  model: string;
  endpoint: string;
  end_user: string | null;
  pricing_json: string | null;
  reserved_micros: bigint;
  idempotency_key: string | null;
  created_at: string;
  lease_id: string | null;
  /** The budget slice funding the hold; none for a key without a budget. */
  slice_id?: string | undefined;
  /** Its jobs, in job order. */
  jobs: Array<{ id: string; inputHash: string | null; estimate: bigint | null }>;
}

export interface SettleItem {
  jobs: readonly CompleteJobInput[];
  settle: SettleInput;
  at: string;
}

/** What a settle wrote: undefined when it changed nothing (the caller then runs the transaction). */
export type SettledAlone = { jobs: CompleteJobResult[]; settlement: SettleResult; ended: SliceEnd | undefined } | undefined;

export interface PgWrites {
  /** True when the request row (and so its jobs') was written. */
  reserve(row: ReservationRow): Promise<boolean>;
  /** The job row when this write gave it fal's id; undefined when it was not `submitting`. */
  recordSubmit(input: { jobId: string; falRequestId: string }): Promise<JobRecord | undefined>;
  settle(item: SettleItem): Promise<SettledAlone>;
}

/** How writes are grouped: `false` sends each alone, as many at once as the pool allows. */
export type GroupCommit = Pick<GroupOptions<unknown, unknown>, 'maxBatch'> | false;

export const DEFAULT_GROUP_COMMIT: GroupCommit = { maxBatch: 64 };

const cols = (names: readonly string[], prefix: string): RawBuilder<unknown> => sql.join(names.map((c) => sql.ref(`${prefix}.${c}`)));
const arrays = <T>(rows: readonly T[], pick: (r: T) => unknown): unknown[] => rows.map(pick);

type ReserveParams = Record<string, unknown[]>;

/** Both reservations: a key without a budget (`funding` none) or a slice of one (`slice`). */
function reserveStatement(funding: 'none' | 'slice') {
  return prepared((q: Kysely<DB>, p: ReserveParams) => {
    const source =
      funding === 'none'
        ? sql`join api_keys as k on k.id = v.key_id and k.budget_micros is null`
        : sql`join budget_slices as b on b.id = v.slice_id and b.key_id = v.key_id`;
    const funded = funding === 'none' ? sql`'none', null` : sql`'slice', b.id`;
    const statement = sql<{ id: string }>`with v as (
  select unnest(${p.ids}::text[]) as id, unnest(${p.labels}::text[]) as client_request_id, unnest(${p.keys}::text[]) as key_id,
    unnest(${p.models}::text[]) as model, unnest(${p.endpoints}::text[]) as endpoint, unnest(${p.users}::text[]) as end_user,
    unnest(${p.pricings}::text[]) as pricing_json, unnest(${p.holds}::bigint[]) as reserved_micros,
    unnest(${p.idempotencyKeys}::text[]) as idempotency_key, unnest(${p.ats}::text[]) as created_at,
    unnest(${p.leases}::text[]) as lease_id, unnest(${p.slices}::text[]) as slice_id
  limit cardinality(${p.ids}::text[])
), r as (
  insert into requests (id, client_request_id, key_id, model, endpoint, end_user, pricing_json, status, reserved_micros, idempotency_key, created_at, lease_id, funded_by, slice_id)
  select v.id, v.client_request_id, v.key_id, v.model, v.endpoint, v.end_user, v.pricing_json, 'reserved', v.reserved_micros, v.idempotency_key, v.created_at, v.lease_id, ${funded}
  from v ${source}
  on conflict (key_id, client_request_id) where client_request_id is not null do nothing
  returning requests.id, requests.endpoint, requests.created_at
), j as (
  insert into upstream_jobs (id, request_id, endpoint, input_hash, estimate_micros, kind, status, created_at)
  select jv.id, r.id, r.endpoint, jv.input_hash, jv.estimate_micros, 'job', 'submitting', r.created_at
  from (select unnest(${p.jobIds}::text[]) as id, unnest(${p.jobRequests}::text[]) as request_id,
    unnest(${p.inputHashes}::text[]) as input_hash, unnest(${p.estimates}::bigint[]) as estimate_micros
    limit cardinality(${p.jobIds}::text[])) as jv
  join r on r.id = jv.request_id
  returning upstream_jobs.id
)
select r.id from r`;
    return { compile: () => statement.compile(q) };
  });
}

function reserveParams(rows: readonly ReservationRow[]): ReserveParams {
  const jobs = rows.flatMap((r) => r.jobs.map((j) => ({ ...j, requestId: r.id })));
  return {
    ids: arrays(rows, (r) => r.id),
    labels: arrays(rows, (r) => r.client_request_id),
    keys: arrays(rows, (r) => r.key_id),
    models: arrays(rows, (r) => r.model),
    endpoints: arrays(rows, (r) => r.endpoint),
    users: arrays(rows, (r) => r.end_user),
    pricings: arrays(rows, (r) => r.pricing_json),
    holds: arrays(rows, (r) => r.reserved_micros.toString()),
    idempotencyKeys: arrays(rows, (r) => r.idempotency_key),
    ats: arrays(rows, (r) => r.created_at),
    leases: arrays(rows, (r) => r.lease_id),
    slices: arrays(rows, (r) => r.slice_id ?? null),
    jobIds: arrays(jobs, (j) => j.id),
    jobRequests: arrays(jobs, (j) => j.requestId),
    inputHashes: arrays(jobs, (j) => j.inputHash),
    estimates: arrays(jobs, (j) => j.estimate?.toString() ?? null),
  };
}

const recordSubmitStatement = prepared((q: Kysely<DB>, p: { ids: string[]; falIds: string[] }) => ({
  compile: () =>
    sql<Selectable<UpstreamJobsTable>>`update upstream_jobs as u set fal_request_id = v.fal_request_id, status = 'submitted'
from (select unnest(${p.ids}::text[]) as id, unnest(${p.falIds}::text[]) as fal_request_id limit cardinality(${p.ids}::text[])) as v
where u.id = v.id and u.status = ${'submitting'}
returning ${cols(JOB_COLUMNS, 'u')}`.compile(q),
}));

type Job = Selectable<UpstreamJobsTable>;
type SettleRow = Selectable<RequestsTable> & { [K in keyof Job as `job_${K}`]: Job[K] | null };

function settleStatement(ownLeaseId: string | undefined) {
  const owned = ownLeaseId === undefined ? sql`` : sql`and (requests.lease_id is null or requests.lease_id = ${ownLeaseId})`;
  const jobOut = sql.join(JOB_COLUMNS.map((c) => sql`${sql.ref(`j.${c}`)} as ${sql.id(`job_${c}`)}`));
  return prepared((q: Kysely<DB>, p: Record<string, unknown[]>) => ({
    compile: () =>
      sql<SettleRow>`with r as (
  select unnest(${p.requestIds}::text[]) as id, unnest(${p.charges}::bigint[]) as charge, unnest(${p.credits}::bigint[]) as credits,
    unnest(${p.images}::bigint[]) as images, unnest(${p.ats}::text[]) as at
  limit cardinality(${p.requestIds}::text[])
), v as (
  select unnest(${p.ids}::text[]) as id, unnest(${p.jobRequests}::text[]) as request_id, unnest(${p.jobAts}::text[]) as at,
    unnest(${p.jobImages}::bigint[]) as images, unnest(${p.pixels}::bigint[]) as pixels,
    unnest(${p.unitsEstimate}::text[]) as units_estimate, unnest(${p.unitsFal}::text[]) as units_fal,
    unnest(${p.costs}::bigint[]) as upstream_cost_micros, unnest(${p.estimated}::bigint[]) as cost_estimated,
    unnest(${p.otherIds}::text[]) as fal_other_ids
  limit cardinality(${p.ids}::text[])
), s as (
  update requests
  set status = 'settled', charge_micros = r.charge, credits = r.credits, images = r.images, error_code = null, settled_at = r.at,
    upstream_cost_micros = (
      select coalesce(sum(case when v.id is not null and o.status in (${sql.join(COMPLETABLE)}) then v.upstream_cost_micros else o.upstream_cost_micros end), 0)
      from upstream_jobs as o left join v on v.id = o.id and v.request_id = o.request_id
      where o.request_id = requests.id
    )
  from r
  where requests.id = r.id and requests.status in (${sql.join(HOLDING)}) and requests.funded_by <> 'key' ${owned}
  returning ${cols(REQUEST_COLUMNS, 'requests')}
), j as (
  update upstream_jobs as u
  set images = v.images, pixels = v.pixels, units_estimate = v.units_estimate, units_fal = v.units_fal,
    upstream_cost_micros = v.upstream_cost_micros, cost_estimated = v.cost_estimated, fal_other_ids = v.fal_other_ids,
    error_code = null, fal_last_word = null, completed_at = v.at, status = 'completed'
  from v
  where u.id = v.id and u.request_id = v.request_id and u.status in (${sql.join(COMPLETABLE)})
    and exists (select from s where s.id = v.request_id)
  returning ${cols(JOB_COLUMNS, 'u')}
)
select ${cols(REQUEST_COLUMNS, 's')}, ${jobOut} from s left join j on j.request_id = s.id`.compile(q),
  }));
}

type Completion = ReturnType<typeof completionValues> & { requestId: string };

function settleParams(items: readonly SettleItem[]) {
  const jobs: Completion[] = items.flatMap((it) => it.jobs.map((j) => ({ ...completionValues(j, it.at), requestId: it.settle.requestId })));
  return {
    requestIds: arrays(items, (it) => it.settle.requestId),
    charges: arrays(items, (it) => toBigInt(it.settle.chargeMicros).toString()),
    credits: arrays(items, (it) => toBigInt(it.settle.credits).toString()),
    images: arrays(items, (it) => toNumber(it.settle.images)),
    ats: arrays(items, (it) => it.at),
    ids: arrays(jobs, (v) => v.id),
    jobRequests: arrays(jobs, (v) => v.requestId),
    jobAts: arrays(jobs, (v) => v.at),
    jobImages: arrays(jobs, (v) => v.images),
    pixels: arrays(jobs, (v) => v.pixels),
    unitsEstimate: arrays(jobs, (v) => v.unitsEstimate),
    unitsFal: arrays(jobs, (v) => v.unitsFal),
    costs: arrays(jobs, (v) => v.cost.toString()),
    estimated: arrays(jobs, (v) => v.estimated),
    otherIds: arrays(jobs, (v) => v.otherIds),
  };
}

function jobOf(row: SettleRow): Job {
  return Object.fromEntries(JOB_COLUMNS.map((c) => [c, row[`job_${c}`]])) as unknown as Job;
}

/** Whether the settle statement can close this request alone (the common case); otherwise the transaction does. */
export function settlesAlone(item: { jobs: readonly CompleteJobInput[]; settle: SettleInput }): boolean {
  if (item.settle.outboxEvent) return false;
  if (toBigInt(item.settle.chargeMicros) < 0n) throw new RangeError('chargeMicros must not be negative');
  return new Set(item.jobs.map((j) => j.jobId)).size === item.jobs.length;
}

/** The four statements, compiled once per ledger (their text names the lease). */
export function pgStatements(ownLeaseId: string | undefined) {
  return { reserveNone: reserveStatement('none'), reserveSlice: reserveStatement('slice'), recordSubmit: recordSubmitStatement, settle: settleStatement(ownLeaseId) };
}

export function pgWrites(db: Kysely<DB>, ownLeaseId: string | undefined, grouping: GroupCommit = DEFAULT_GROUP_COMMIT): PgWrites {
  const { reserveNone, reserveSlice, recordSubmit, settle: settleOne } = pgStatements(ownLeaseId);

  const reserveMany = (statement: typeof reserveNone) => async (rows: readonly ReservationRow[]) => {
    const written = new Set((await statement.run(db, reserveParams(rows))).rows.map((r) => r.id));
    return rows.map((r) => written.has(r.id));
  };

  const recordMany = async (inputs: ReadonlyArray<{ jobId: string; falRequestId: string }>) => {
    const { rows } = await recordSubmit.run(db, { ids: inputs.map((i) => i.jobId), falIds: inputs.map((i) => i.falRequestId) });
    const byId = new Map(rows.map((r) => [r.id, toJob(r)]));
    return inputs.map((i) => byId.get(i.jobId));
  };

  // Only the statement is grouped: what a caller reads once it has committed
  // is its own, so a failed read reaches that caller alone.
  const settleMany = async (items: readonly SettleItem[]): Promise<Array<SettleRow[] | undefined>> => {
    const { rows } = await settleOne.run(db, settleParams(items));
    const byRequest = new Map<string, SettleRow[]>();
    for (const r of rows) byRequest.set(r.id, [...(byRequest.get(r.id) ?? []), r]);
    return items.map((it) => byRequest.get(it.settle.requestId));
  };

  // A request or job named twice in one statement would be written once and answered twice.
  const group = <I, O>(many: (items: readonly I[]) => Promise<O[]>, keysOf: (item: I) => string[]) => {
    const one = async (item: I): Promise<O> => (await many([item]))[0]!;
    if (grouping === false) return one;
    return createGroup<I, O>({ many: (items) => many(items), one, maxBatch: grouping.maxBatch, keysOf });
  };

  const reserveKeys = (r: ReservationRow) => [r.id, ...r.jobs.map((j) => j.id)];
  const none = group(reserveMany(reserveNone), reserveKeys);
  const sliced = group(reserveMany(reserveSlice), reserveKeys);
  const settled = group(settleMany, (it: SettleItem) => [it.settle.requestId, ...it.jobs.map((j) => j.jobId)]);
  return {
    reserve: (row) => (row.slice_id === undefined ? none(row) : sliced(row)),
    recordSubmit: group(recordMany, (i) => [i.jobId]),
    settle: async (item) => settledResult(db, item, await settled(item)),
  };
}

async function settledResult(db: Kysely<DB>, item: SettleItem, rows: SettleRow[] | undefined): Promise<SettledAlone> {
  const first = rows?.[0];
  if (rows === undefined || first === undefined) return undefined;
  const written = new Map(rows.filter((r) => r.job_id !== null).map((r) => [r.job_id!, toJob(jobOf(r))]));
  const jobs: CompleteJobResult[] = [];
  for (const j of item.jobs) {
    const job = written.get(j.jobId);
    jobs.push(job ? completeResult(job, true) : completeResult(await jobOrThrow(db, j.jobId), false));
  }
  const charge = toBigInt(item.settle.chargeMicros);
  const ended = first.funded_by === 'slice' ? { sliceId: first.slice_id ?? '', hold: toBigInt(first.reserved_micros), charge } : undefined;
  return { jobs, settlement: { settled: true, request: toRequest(first) }, ended };
}
