/**
 * On PostgreSQL, a request's opening writes are one statement each, sent
 * without `BEGIN`/`COMMIT`: a single statement is its own transaction, so its
 * data-modifying CTEs commit together or not at all, exactly as the
 * multi-statement transaction they replace (src/metering/ledger-statements.ts,
 * which SQLite runs: it has no data-modifying CTEs). Each saves three round
 * trips and their server work per request (docs/LEDGER-COST.md).
 *
 * Every statement of one command sees the same snapshot: a CTE does not see
 * another's writes, only its RETURNING rows, which is all these read.
 */
import { sql, type Insertable, type Kysely } from 'kysely';
import { prepared } from '../db/prepared.js';
import type { DB, RequestsTable } from '../db/schema.js';
import { slicedInsert, unfundedInsert, type SlicedValues } from './ledger-statements.js';
import { JOB_COLUMNS } from './records.js';

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
    // fal's id on the job and `submitted` on its request (only one still
    // holding its reservation: a late record for a closed request keeps the
    // job visible without reopening it).
    recordSubmit: prepared((q: Kysely<DB>, p: { id: string; falRequestId: string }) =>
      q
        .with('j', (w) =>
          w
            .updateTable('upstream_jobs')
            .set({ fal_request_id: p.falRequestId, status: 'submitted' })
            .where('id', '=', p.id)
            .where('status', '=', 'submitting')
            .returning(JOB_COLUMNS),
        )
        .with('r', (w) =>
          w
            .updateTable('requests')
            .set({ status: 'submitted' })
            // A scalar subquery (j has at most one row): the request is found by its primary key, whatever plan the named statement keeps.
            .where('id', '=', (eb) => eb.selectFrom('j').select('j.request_id'))
            .where('status', '=', 'reserved')
            .returning('requests.id'),
        )
        .selectFrom('j')
        .select(JOB_COLUMNS.map((c) => `j.${c}` as const)),
    ),
  };
}

export type PgOpeningStatements = ReturnType<typeof pgOpeningStatements>;
