import type { Logger } from 'pino';
import { ApiError } from '../errors.js';
import { FalCallError, type FalGateway, type FalJobStatus, type FalResult } from '../fal/gateway.js';
import type { Ledger } from '../metering/ledger.js';
import { nextJobState, provesJobFailed, type CancelOutcome, type JobEvent, type JobState } from '../metering/job-state.js';
import type { Metrics } from '../metrics.js';
import type { RequestStop } from './request-stop.js';

/**
 * One fal job of a request: submit, wait, collect, or cancel when the
 * request is stopped. Each answer from fal is fed to the job state machine
 * (src/metering/job-state.ts), which names the ledger write this module then
 * performs; the job's final state is what the use case settles on.
 */

export interface JobRunnerDeps {
  fal: FalGateway;
  ledger: Ledger;
  logger: Logger;
  metrics?: Metrics | undefined;
}

export interface Job {
  requestId: string;
  model: string;
  endpoint: string;
  /** Told once a fal job exists or may exist (submit answered, or its outcome unknown). */
  onSubmitted?: (() => void) | undefined;
  /** Told each state fal reports while the job waits. */
  onStatus?: ((s: FalJobStatus) => void) | undefined;
}

export type JobOutcome = JobState<FalResult, FalCallError>;

/** How long we wait for fal to confirm a cancel before leaving it to reconciliation. */
const CANCEL_CONFIRM_MS = 2_000;

/** Ledger writes failing on the way: the caller is told metering is unavailable, never served unmetered. */
export class MeteringUnavailable extends Error {
  constructor(readonly what: string, cause: unknown) {
    super(`ledger ${what} failed`, { cause });
    this.name = 'MeteringUnavailable';
  }
}

/** `input` goes to fal once and is not kept: a job may wait for minutes. */
export async function runJob(deps: JobRunnerDeps, job: Job, input: Record<string, unknown>, stop: RequestStop): Promise<JobOutcome> {
  const submitted = await submit(deps, job, input, stop);
  if (submitted.at !== 'submitted') return submitted;
  // Returned, not awaited: this frame ends here and only the small one below waits on fal.
  return waitAndCollect(deps, job, submitted, stop);
}

/** The submit, and the ledger's record of the job it made (or of what it may have made). */
async function submit(deps: JobRunnerDeps, job: Job, input: Record<string, unknown>, stop: RequestStop): Promise<JobOutcome> {
  const log = logFor(deps, job);
  let answer: { falRequestId: string; strayIds: string[] };
  try {
    answer = await deps.fal.submit(job.endpoint, input, { signal: stop.signal });
  } catch (err) {
    const fe = asFalError(err);
    await recordStrays(deps, job, fe.strayIds, log);
    if (fe.ambiguous) job.onSubmitted?.();
    stop.stop('sibling');
    return apply(deps, { at: 'new' }, { type: 'submit_failed', error: fe });
  }
  job.onSubmitted?.();
  job.onStatus?.({ status: 'IN_QUEUE' });
  const submitted = await apply(deps, { at: 'new' }, { type: 'submitted', falRequestId: answer.falRequestId });
  try {
    await deps.ledger.recordSubmit({ requestId: job.requestId, falRequestId: answer.falRequestId, endpoint: job.endpoint });
  } catch (err) {
    // The job exists but its id is not written: reconciliation can only find it as an orphan. Stop the rest.
    log('error', { err, fal_request_id: answer.falRequestId }, 'ledger write failed after submit');
    stop.stop('sibling');
    return apply(deps, submitted, { type: 'record_failed', error: new FalCallError('ledger unavailable', { phase: 'submit', kind: 'aborted' }) });
  }
  log('debug', { fal_request_id: answer.falRequestId }, 'fal job submitted');
  await recordStrays(deps, job, answer.strayIds, log);
  return submitted;
}

/** The wait for fal: what a job holds for minutes, so this frame is kept small. */
async function waitAndCollect(deps: JobRunnerDeps, job: Job, submitted: JobOutcome & { at: 'submitted' }, stop: RequestStop): Promise<JobOutcome> {
  try {
    await deps.fal.waitForCompletion(job.endpoint, submitted.falRequestId, { signal: stop.signal, onStatus: job.onStatus });
    return apply(deps, submitted, { type: 'result', result: await deps.fal.result(job.endpoint, submitted.falRequestId, { signal: stop.signal }) });
  } catch (err) {
    return afterWait(deps, job, submitted, asFalError(err), stop);
  }
}

/** The wait failed: fal's own failure stops the siblings; our own stop asks fal to cancel, and collects what completed anyway. */
async function afterWait(deps: JobRunnerDeps, job: Job, submitted: JobOutcome & { at: 'submitted' }, fe: FalCallError, stop: RequestStop): Promise<JobOutcome> {
  if (fe.kind !== 'aborted') {
    stop.stop('sibling');
    return apply(deps, submitted, { type: 'wait_failed', error: fe });
  }
  const outcome = await cancelOrCollect(deps, job.endpoint, submitted.falRequestId, logFor(deps, job));
  return apply(deps, submitted, { type: 'cancel_settled', error: fe, outcome });
}

/** One step of the job state machine, and the ledger write it names. */
async function apply(deps: JobRunnerDeps, state: JobOutcome, event: JobEvent<FalResult, FalCallError>): Promise<JobOutcome> {
  const t = nextJobState(state, event);
  const w = t.write;
  if (w?.write === 'close_job') await ledgerWrite('close job', () => deps.ledger.failJob({ falRequestId: w.falRequestId, status: w.status }));
  return t.state;
}

function logFor(deps: JobRunnerDeps, job: Job): Log {
  return (level, obj, msg) => deps.logger[level]({ request_id: job.requestId, model: job.model, ...obj }, msg);
}

type Log = (level: 'debug' | 'info' | 'warn' | 'error', obj: object, msg: string) => void;

/**
 * A refused submit attempt that fal nonetheless turned into a job: kept in
 * the ledger as a `duplicate` job so the upstream cost it may incur is
 * visible, never billed to the caller.
 */
async function recordStrays(deps: JobRunnerDeps, job: Job, ids: readonly string[], log: Log): Promise<void> {
  for (const id of ids) {
    log('warn', { fal_request_id: id }, 'fal made a job on a refused submit attempt; recorded as duplicate');
    deps.metrics?.refusals.inc({ reason: 'duplicate_fal_job' });
    await ledgerWrite('duplicate', () => deps.ledger.markDuplicate({ requestId: job.requestId, falRequestId: id, endpoint: job.endpoint }));
  }
}

/**
 * Our wait was cut short. Cancel the job; if fal says it already completed,
 * it will bill us, so fetch the result and bill (and, if the caller is still
 * there, deliver) it rather than lose it.
 */
async function cancelOrCollect(deps: JobRunnerDeps, endpoint: string, falRequestId: string, log: Log): Promise<CancelOutcome<FalResult>> {
  const outcome = await deps.fal.cancel(endpoint, falRequestId, { signal: AbortSignal.timeout(10_000) });
  log('info', { fal_request_id: falRequestId, outcome }, 'fal job cancel');
  if (outcome !== 'already_completed' && outcome !== 'cancellation_requested') return { unknown: true };
  // A 202 is only a request: the job may still finish (and be billed).
  // Confirm briefly; whatever stays unknown is left to reconciliation.
  const confirmBy = Date.now() + CANCEL_CONFIRM_MS;
  try {
    while ((await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(5_000) })).status !== 'COMPLETED') {
      if (Date.now() > confirmBy) return { unknown: true };
      await new Promise((r) => setTimeout(r, 100));
    }
    return { result: await deps.fal.result(endpoint, falRequestId, { signal: AbortSignal.timeout(30_000) }) };
  } catch (err) {
    if (err instanceof FalCallError && provesJobFailed(err)) return { cancelled: true };
    log('warn', { err: (err as Error).message, fal_request_id: falRequestId }, 'job state unknown after cancel; left for reconciliation');
    return { unknown: true };
  }
}

/** Fail closed: the use case turns this into the caller's 503 (and logs it once). */
async function ledgerWrite<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new MeteringUnavailable(what, err);
  }
}

function asFalError(err: unknown): FalCallError {
  if (err instanceof FalCallError) return err;
  if (err instanceof ApiError || err instanceof MeteringUnavailable) throw err;
  return new FalCallError(`unexpected: ${(err as Error)?.message}`, { phase: 'other', kind: 'bad_response', cause: err });
}
