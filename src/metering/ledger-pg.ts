/**
 * The ledger's writes on PostgreSQL for the request path, one statement each,
 * sent without `BEGIN`/`COMMIT` (docs/LEDGER-COST.md): a single statement is
 * its own transaction, so its data-modifying CTEs commit together or not at
 * all, exactly as the multi-statement transactions they stand for
 * (src/metering/ledger-statements.ts, which SQLite runs: it has no
 * data-modifying CTEs). Each saves the round trips of `BEGIN`, `COMMIT` and
 * its other statements, and their server work.
 *
 * - reserve: the request row and, only when it was written, its job rows;
 * - settle, for the common case only: a request still holding its
 *   reservation, owned by this process, whose hold is not on its key row,
 *   settled without a billing event. The request's UPDATE decides (it locks
 *   the row and re-checks those conditions on the row as committed by
 *   whoever held it before); the jobs are written only when it settled the
 *   request, so anything else changes nothing here and goes through the
 *   transaction, which handles every case.
 *
 * Every row is reached by its key (`id = …`, `id = any($ids)`, never
 * `id in (select …)`): a named statement may keep a generic plan, which must
 * not scan a table. Every statement of one command sees the same snapshot
 * and a CTE cannot see another's writes, only their RETURNING rows: the
 * settled request's cost is its jobs' as they stand, each job the statement
 * completes counted at the cost it writes.
 */
import { sql, type CompiledQuery, type Insertable, type Kysely, type RawBuilder, type Selectable } from 'kysely';
import { prepared } from '../db/prepared.js';
import type { DB, RequestsTable, UpstreamJobsTable } from '../db/schema.js';
import { toBigInt, toNumber } from '../db/values.js';
import { completeResult, completionValues, type CompleteJobInput, type CompleteJobResult } from './ledger-jobs.js';
import type { SettleInput, SettleResult, SliceEnd } from './ledger-requests.js';
import { COMPLETABLE, HOLDING, slicedInsert, unfundedInsert, type SlicedValues } from './ledger-statements.js';
import { JOB_COLUMNS, REQUEST_COLUMNS, jobOrThrow, toJob, toRequest } from './records.js';

/** A reservation's job rows, as arrays in job order (one element per job; none for a request without jobs). */
export type JobArrays = {
  job_ids: string[];
  input_hashes: Array<string | null>;
  /** Decimal strings: node-postgres sends an array's elements as text. */
  estimates: Array<string | null>;
};

const JOB_INSERT_COLUMNS = ['id', 'request_id', 'endpoint', 'input_hash', 'estimate_micros', 'kind', 'status', 'created_at'] as const;

/**
 * The request row (`insert`, answering its id when written) and, only when
 * it was written, every job row: set-returning functions in one select list
 * run in step, one row per job.
 */
function withJobs(q: Kysely<DB>, insert: (w: Pick<Kysely<DB>, 'insertInto'>) => ReturnType<typeof unfundedInsert>, p: Insertable<RequestsTable> & JobArrays) {
  return q
    .with('r', (w) => insert(w))
    .with('j', (w) =>
      w
        .insertInto('upstream_jobs')
        .columns(JOB_INSERT_COLUMNS)
        .expression((eb) =>
          eb
            .selectFrom('r')
            .select([
              sql<string>`unnest(${p.job_ids}::text[])`.as('id'),
              'r.id as request_id',
              sql<string>`${p.endpoint}`.as('endpoint'),
              sql<string | null>`unnest(${p.input_hashes}::text[])`.as('input_hash'),
              sql<bigint | null>`unnest(${p.estimates}::bigint[])`.as('estimate_micros'),
              sql<string>`'job'`.as('kind'),
              sql<string>`'submitting'`.as('status'),
              sql<string>`${p.created_at}`.as('created_at'),
            ]),
        )
        .returning('upstream_jobs.id'),
    )
    .selectFrom('r')
    .select('r.id');
}

export function pgOpeningStatements() {
  return {
    reserveUnfunded: prepared((q: Kysely<DB>, p: Insertable<RequestsTable> & JobArrays) => withJobs(q, (w) => unfundedInsert(w, p), p)),
    reserveSliced: prepared((q: Kysely<DB>, p: SlicedValues & JobArrays) => withJobs(q, (w) => slicedInsert(w, p), p)),
  };
}

export type PgOpeningStatements = ReturnType<typeof pgOpeningStatements>;

type SettleArrays = {
  requestId: string;
  charge: bigint;
  credits: bigint;
  images: number;
  at: string;
  ids: string[];
  jobImages: number[];
  pixels: number[];
  unitsEstimate: string[];
  unitsFal: Array<string | null>;
  costs: string[];
  estimated: number[];
  otherIds: Array<string | null>;
};

type Job = Selectable<UpstreamJobsTable>;
type Row = Selectable<RequestsTable> & { [K in keyof Job as `job_${K}`]: Job[K] | null };

const list = (cols: readonly string[], prefix: string): RawBuilder<unknown> => sql.join(cols.map((c) => sql.ref(`${prefix}.${c}`)));

function statement(q: Kysely<DB>, p: SettleArrays, ownLeaseId: string | undefined): CompiledQuery<Row> {
  const owned = ownLeaseId === undefined ? sql`` : sql`and (lease_id is null or lease_id = ${ownLeaseId})`;
  const jobOut = sql.join(JOB_COLUMNS.map((c) => sql`${sql.ref(`j.${c}`)} as ${sql.id(`job_${c}`)}`));
  return sql<Row>`with v as (
  select unnest(${p.ids}::text[]) as id, unnest(${p.jobImages}::bigint[]) as images, unnest(${p.pixels}::bigint[]) as pixels,
    unnest(${p.unitsEstimate}::text[]) as units_estimate, unnest(${p.unitsFal}::text[]) as units_fal,
    unnest(${p.costs}::bigint[]) as upstream_cost_micros, unnest(${p.estimated}::bigint[]) as cost_estimated,
    unnest(${p.otherIds}::text[]) as fal_other_ids
), s as (
  update requests
  set status = 'settled', charge_micros = ${p.charge}, credits = ${p.credits}, images = ${p.images}, error_code = null, settled_at = ${p.at},
    upstream_cost_micros = (
      select coalesce(sum(case when v.id is not null and o.status in (${sql.join(COMPLETABLE)}) then v.upstream_cost_micros else o.upstream_cost_micros end), 0)
      from upstream_jobs as o left join v on v.id = o.id
      where o.request_id = ${p.requestId}
    )
  where id = ${p.requestId} and status in (${sql.join(HOLDING)}) and funded_by <> 'key' ${owned}
  returning ${list(REQUEST_COLUMNS, 'requests')}
), j as (
  update upstream_jobs as u
  set images = v.images, pixels = v.pixels, units_estimate = v.units_estimate, units_fal = v.units_fal,
    upstream_cost_micros = v.upstream_cost_micros, cost_estimated = v.cost_estimated, fal_other_ids = v.fal_other_ids,
    error_code = null, fal_last_word = null, completed_at = ${p.at}, status = 'completed'
  from v
  where u.id = any(${p.ids}::text[]) and u.id = v.id and u.request_id = ${p.requestId} and u.status in (${sql.join(COMPLETABLE)}) and exists (select from s)
  returning ${list(JOB_COLUMNS, 'u')}
)
select ${list(REQUEST_COLUMNS, 's')}, ${jobOut} from s left join j on true`.compile(q);
}

export function pgSettleStatement(ownLeaseId: string | undefined) {
  return prepared((q: Kysely<DB>, p: SettleArrays) => ({ compile: () => statement(q, p, ownLeaseId) }));
}

export type PgSettleStatement = ReturnType<typeof pgSettleStatement>;

/**
 * The settle in one statement; undefined when it changed nothing (not the
 * common case): the caller then runs the transaction.
 */
export async function settleJobsAlone(
  db: Kysely<DB>,
  statement: PgSettleStatement,
  input: { jobs: readonly CompleteJobInput[]; settle: SettleInput },
  at: string,
  ended: SliceEnd[],
): Promise<{ jobs: CompleteJobResult[]; settlement: SettleResult } | undefined> {
  const { settle } = input;
  if (settle.outboxEvent) return undefined;
  const values = input.jobs.map((j) => completionValues(j, at));
  if (new Set(values.map((v) => v.id)).size !== values.length) return undefined;
  const charge = toBigInt(settle.chargeMicros);
  if (charge < 0n) throw new RangeError('chargeMicros must not be negative');
  const { rows } = await statement.run(db, {
    requestId: settle.requestId,
    charge,
    credits: toBigInt(settle.credits),
    images: toNumber(settle.images),
    at,
    ids: values.map((v) => v.id),
    jobImages: values.map((v) => v.images),
    pixels: values.map((v) => v.pixels),
    unitsEstimate: values.map((v) => v.unitsEstimate),
    unitsFal: values.map((v) => v.unitsFal),
    costs: values.map((v) => v.cost.toString()),
    estimated: values.map((v) => v.estimated),
    otherIds: values.map((v) => v.otherIds),
  });
  const first = rows[0];
  if (first === undefined) return undefined;
  const written = new Map(rows.filter((r) => r.job_id !== null).map((r) => [r.job_id!, toJob(jobOf(r))]));
  const jobs: CompleteJobResult[] = [];
  for (const v of values) {
    const job = written.get(v.id);
    jobs.push(job ? completeResult(job, true) : completeResult(await jobOrThrow(db, v.id), false));
  }
  if (first.funded_by === 'slice') ended.push({ sliceId: first.slice_id ?? '', hold: toBigInt(first.reserved_micros), charge });
  return { jobs, settlement: { settled: true, request: toRequest(first) } };
}

function jobOf(row: Row): Job {
  return Object.fromEntries(JOB_COLUMNS.map((c) => [c, row[`job_${c}`]])) as unknown as Job;
}
