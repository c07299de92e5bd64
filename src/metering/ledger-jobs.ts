/**
 * The ledger's writes to one fal job's row (src/metering/ledger.ts runs each
 * inside its Kysely transaction): fal's id added when submit answers, the
 * job completed or closed at what fal billed, strays recorded. Each is a
 * conditional UPDATE on the row's current state, so a repeat changes nothing.
 */
import type { Kysely, Transaction } from 'kysely';
import { OPEN_JOB, type DB } from '../db/schema.js';
import { toBigInt, toNumber } from '../db/values.js';
import { completedRow, type LedgerStatements } from './ledger-statements.js';
import { canonicalDecimal } from './money.js';
import { jobOrThrow, toJob, type JobRecord } from './records.js';
import { strayIdFor } from './job-ids.js';
import { GAVE_UP } from './job-state.js';
import type { PgWrites } from './ledger-pg.js';

export { jobIdFor, strayIdFor } from './job-ids.js';

export interface CompleteJobInput {
  /** Our job id (`jobIdFor`, or a stray's). */
  jobId: string;
  /** Another id fal reported for this job (its runner retry), kept beside the one submit answered. */
  otherFalId?: string | null | undefined;
  images: number;
  pixels: number;
  /** Our estimate of fal's billed quantity, as a decimal. */
  unitsEstimate: string | number | bigint;
  /** fal's `x-fal-billable-units`, when it sent one. */
  unitsFal?: string | number | bigint | null | undefined;
  upstreamCostMicros: bigint;
}

export interface CompleteJobResult {
  job: JobRecord;
  /** False when the job was already completed (a repeat). */
  changed: boolean;
  /** fal reported a quantity that is not numerically equal to our estimate. */
  unitsMismatch: boolean;
}

/** A job fal said ended without images, or that we stop asking about. */
export interface CloseJobInput {
  jobId: string;
  status: 'failed' | 'cancelled' | 'refused' | 'lost';
  /** What fal billed for it (its units priced), 0 when nothing. */
  upstreamCostMicros: bigint;
  unitsFal?: string | null | undefined;
  errorCode?: string | null | undefined;
  /** `upstreamCostMicros` is our estimate (fal reported no cost for a job given up). */
  costEstimated?: boolean | undefined;
  /** fal's last answer about the job, when it is given up. */
  falLastWord?: string | null | undefined;
}

/**
 * fal's id on the job: one UPDATE of the job row, its own transaction on
 * both databases. The request row is not written: it holds its reservation
 * (`reserved`) until it closes, and what reached fal is its jobs' state.
 * Every request index of PostgreSQL would take a new entry for a status
 * change, for no reader (docs/LEDGER-COST.md).
 */
export async function recordSubmit(db: Kysely<DB>, q: LedgerStatements, input: { jobId: string; falRequestId: string }, pg: PgWrites | undefined): Promise<JobRecord> {
  if (pg) return (await pg.recordSubmit(input)) ?? alreadySubmitted(db, input);
  const [row] = (await q.recordSubmit.run(db, { id: input.jobId, falRequestId: input.falRequestId })).rows;
  return row ? toJob(row) : alreadySubmitted(db, input);
}

/** A repeat of a submit's record changes nothing; a different fal id for the same job is a bug. */
async function alreadySubmitted(db: Kysely<DB>, input: { jobId: string; falRequestId: string }): Promise<JobRecord> {
  const existing = await jobOrThrow(db, input.jobId);
  if (existing.falRequestId !== input.falRequestId) {
    throw new Error(`job ${input.jobId} already has fal request ${existing.falRequestId ?? '(none)'} and state ${existing.status}, not ${input.falRequestId}`);
  }
  return existing;
}

/** A job's completion as the completing UPDATE writes it. */
export function completionValues(input: CompleteJobInput, at: string) {
  return {
    id: input.jobId,
    otherIds: input.otherFalId ?? null,
    images: toNumber(input.images),
    pixels: toNumber(input.pixels),
    unitsEstimate: canonicalDecimal(input.unitsEstimate),
    unitsFal: input.unitsFal === null || input.unitsFal === undefined ? null : canonicalDecimal(input.unitsFal),
    cost: toBigInt(input.upstreamCostMicros),
    // fal's units are the cost's source when it sent them; without them it is our estimate.
    estimated: input.unitsFal === null || input.unitsFal === undefined ? 1 : 0,
    at,
  };
}

/** What completeJob answers for a job row, changed by it or (a repeat) as it stands. */
export function completeResult(job: JobRecord, changed: boolean): CompleteJobResult {
  return { job, changed, unitsMismatch: job.unitsFal !== null && job.unitsEstimate !== null && job.unitsFal !== job.unitsEstimate };
}

export async function completeJob(trx: Transaction<DB>, q: LedgerStatements, input: CompleteJobInput, at: string): Promise<CompleteJobResult> {
  const row = (await q.completeJob.run(trx, completionValues(input, at))).rows[0];
  // Unchanged (a repeat): report the row as it stands.
  return completeResult(row ? toJob(row) : await jobOrThrow(trx, input.jobId), row !== undefined);
}

/**
 * fal's result for a job given up as `lost` whose request has closed
 * (late-word.ts): completed at what fal billed, keeping the give-up's error
 * code. No caller paid for it, and the code is what tells it from a
 * completed job its settled request charged (reports.ts, unrecovered).
 * Only a `lost` job changes.
 */
export async function completeLostJob(trx: Transaction<DB>, input: CompleteJobInput, at: string): Promise<CompleteJobResult> {
  const v = completionValues(input, at);
  const row = await trx
    .updateTable('upstream_jobs')
    .set(completedRow(v, GAVE_UP))
    .where('id', '=', v.id)
    .where('status', '=', 'lost')
    .returningAll()
    .executeTakeFirst();
  return completeResult(row ? toJob(row) : await jobOrThrow(trx, input.jobId), row !== undefined);
}

export async function closeJob(trx: Transaction<DB>, input: CloseJobInput, at: string): Promise<{ changed: boolean; job: JobRecord }> {
  const cost = toBigInt(input.upstreamCostMicros);
  if (cost < 0n) throw new RangeError('upstreamCostMicros must not be negative');
  const row = await trx
    .updateTable('upstream_jobs')
    .set({
      status: input.status,
      upstream_cost_micros: cost,
      units_fal: input.unitsFal === null || input.unitsFal === undefined ? null : canonicalDecimal(input.unitsFal),
      error_code: input.errorCode ?? null,
      cost_estimated: input.costEstimated ? 1 : 0,
      fal_last_word: input.falLastWord ?? null,
      completed_at: at,
    })
    .where('id', '=', input.jobId)
    .where('status', 'in', OPEN_JOB)
    .returningAll()
    .executeTakeFirst();
  return { changed: row !== undefined, job: row ? toJob(row) : await jobOrThrow(trx, input.jobId) };
}

export async function recordStrays(trx: Transaction<DB>, input: { requestId: string; endpoint: string; falRequestIds: readonly string[] }, at: string): Promise<void> {
  for (const falRequestId of input.falRequestIds) {
    await trx
      .insertInto('upstream_jobs')
      .values({ id: strayIdFor(input.requestId, falRequestId), request_id: input.requestId, kind: 'stray', fal_request_id: falRequestId, endpoint: input.endpoint, status: 'submitted', created_at: at })
      .onConflict((oc) => oc.doNothing())
      .execute();
  }
}
