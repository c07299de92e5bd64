import type { Logger } from 'pino';
import { ApiError, StorageError } from '../errors.js';
import { FalCallError } from '../fal/errors.js';
import type { FalJobStatus, FalResult } from '../fal/types.js';
import { nextJobState, type CancelOutcome, type Ended, type JobEvent, type JobState } from '../metering/job-state.js';
import { failedJobCost, type PricedModel } from '../metering/pricing.js';
import type { Metrics } from '../metrics.js';
import type { FalGateway, RequestLedger } from './ports.js';
import type { RequestStop } from './request-stop.js';

/**
 * One fal job of a request: submit, wait, collect, or cancel when the
 * request is stopped. Each answer from fal is fed to the job state machine
 * (src/metering/job-state.ts), which names the ledger write this module then
 * performs; the job's final state is what the use case settles on.
 */

export interface JobRunnerDeps {
  fal: FalGateway;
  ledger: RequestLedger;
  /**
   * How long a submit may take. A submit is never cut by the request's stop
   * (cut in flight it may have made a job we never learn of): it runs to its
   * answer, bounded by this, which also closes the window reconciliation
   * searches fal's request listing in for a lost submit (SUBMIT_TIMEOUT_MS,
   * src/metering/lost-submits.ts, wired by src/service.ts).
   */
  submitTimeoutMs: number;
  logger: Logger;
  metrics?: Metrics | undefined;
}

export interface Job {
  /** Our id of the job: its ledger row, written with the reservation. */
  jobId: string;
  requestId: string;
  /** The caller's `x-request-id`, logged beside ours. */
  clientRequestId?: string | undefined;
  model: PricedModel & { id: string };
  /** The request asked for prompt expansion (fal bills its fee with every completed job). */
  promptExpansion: boolean;
  endpoint: string;
  /** Told once a fal job exists or may exist (submit answered, or its outcome unknown). */
  onSubmitted?: (() => void) | undefined;
  /** Told each state fal reports while the job waits. */
  onStatus?: ((s: FalJobStatus) => void) | undefined;
}

export type JobOutcome = JobState<FalResult, FalCallError>;

/** How long we wait for fal to confirm a cancel before leaving it to reconciliation. */
const CANCEL_CONFIRM_MS = 2_000;

/**
 * Ledger writes failing on the way: the caller is told metering is
 * unavailable, never served unmetered. `unavailable`: storage could not be
 * reached or take work (the ports' StorageError says so), where a retry may
 * succeed; the cause is storage's own error, for the log.
 */
export class MeteringUnavailable extends Error {
  readonly unavailable: boolean;
  constructor(readonly what: string, err: unknown) {
    super(`ledger ${what} failed`, { cause: err instanceof StorageError ? err.cause : err });
    this.name = 'MeteringUnavailable';
    this.unavailable = err instanceof StorageError && err.unavailable;
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
  const start: JobOutcome = { at: 'submitting' };
  let answer: { falRequestId: string; strayIds: string[] };
  try {
    answer = await deps.fal.submit(job.endpoint, input, { signal: AbortSignal.timeout(deps.submitTimeoutMs) });
  } catch (err) {
    const fe = asFalError(err);
    await recordStrays(deps, job, fe.strayIds, log);
    if (fe.ambiguous) job.onSubmitted?.();
    stop.stop('sibling');
    return apply(deps, job, start, { type: 'submit_failed', error: fe });
  }
  job.onSubmitted?.();
  job.onStatus?.({ status: 'IN_QUEUE' });
  let submitted: JobOutcome;
  try {
    submitted = await apply(deps, job, start, { type: 'submitted', falRequestId: answer.falRequestId });
  } catch (err) {
    // The job exists but its id is not written: reconciliation cannot find it by id. Stop the rest.
    log('error', { err: (err as Error).cause ?? err, fal_request_id: answer.falRequestId }, 'ledger write failed after submit');
    stop.stop('sibling');
    const recording = { at: 'submitted', falRequestId: answer.falRequestId } as const;
    return nextJobState<FalResult, FalCallError>(recording, { type: 'record_failed', error: new FalCallError('ledger unavailable', { phase: 'submit', kind: 'aborted' }) }).state;
  }
  log('debug', { fal_request_id: answer.falRequestId }, 'fal job submitted');
  await recordStrays(deps, job, answer.strayIds, log);
  return submitted;
}

/** The wait for fal: what a job holds for minutes, so this frame is kept small. */
async function waitAndCollect(deps: JobRunnerDeps, job: Job, submitted: JobOutcome & { at: 'submitted' }, stop: RequestStop): Promise<JobOutcome> {
  try {
    if (stop.signal.aborted) throw new FalCallError('fal status aborted', { phase: 'status', kind: 'aborted', cause: stop.signal.reason });
    await deps.fal.waitForCompletion(job.endpoint, submitted.falRequestId, { signal: stop.signal, onStatus: job.onStatus });
    return apply(deps, job, submitted, { type: 'result', result: await deps.fal.result(job.endpoint, submitted.falRequestId, { signal: stop.signal }) });
  } catch (err) {
    return afterWait(deps, job, submitted, asFalError(err), stop);
  }
}

/** The wait failed: fal's own failure stops the siblings; our own stop asks fal to cancel, and collects what completed anyway. */
async function afterWait(deps: JobRunnerDeps, job: Job, submitted: JobOutcome & { at: 'submitted' }, fe: FalCallError, stop: RequestStop): Promise<JobOutcome> {
  const log = logFor(deps, job);
  if (fe.kind !== 'aborted') {
    stop.stop('sibling');
    const ended = fe.phase === 'result' ? await endedAtFal(deps, job.endpoint, submitted.falRequestId, fe, log) : undefined;
    return apply(deps, job, submitted, { type: 'wait_failed', error: fe, ended });
  }
  const outcome = await cancelOrCollect(deps, job.endpoint, submitted.falRequestId, log);
  return apply(deps, job, submitted, { type: 'cancel_settled', error: fe, outcome });
}

/**
 * A result fetch failed: only fal's status can say whether the job itself
 * ended with an error (and then the failed answer carried what fal billed)
 * or the fetch failed in front of a job that completed (a 404 or 5xx from
 * fal's edge), which stays open for reconciliation.
 */
async function endedAtFal(deps: JobRunnerDeps, endpoint: string, falRequestId: string, fe: FalCallError, log: Log): Promise<Ended | undefined> {
  // fal answered the result 200: the job completed and billed, but its output is unusable (images we cannot size).
  if (fe.kind === 'bad_response' && fe.status === 200 && fe.output !== undefined) {
    return { how: 'failed', billedUnits: fe.billableUnits ?? null, errorType: 'unreadable_output', completedAtFal: true };
  }
  try {
    const st = await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(15_000) });
    if (st.status !== 'COMPLETED' || !st.failed) return undefined;
    const how = st.failed.errorType === 'client_cancelled' ? 'cancelled' : 'failed';
    return { how, billedUnits: fe.billableUnits ?? null, errorType: st.failed.errorType };
  } catch (err) {
    log('warn', { err: (err as Error).message, fal_request_id: falRequestId }, 'fal status unreadable after a failed result; job left for reconciliation');
    return undefined;
  }
}

/** One step of the job state machine, and the ledger write it names. */
async function apply(deps: JobRunnerDeps, job: Job, state: JobOutcome, event: JobEvent<FalResult, FalCallError>): Promise<JobOutcome> {
  const t = nextJobState(state, event);
  const w = t.write;
  if (w?.write === 'record_submit') await ledgerWrite('record submit', () => deps.ledger.recordSubmit({ jobId: job.jobId, falRequestId: w.falRequestId }));
  if (w?.write === 'close_job') {
    const cost = failedJobCost(job.model, w.billedUnits, w.completedAtFal === true && job.promptExpansion);
    if (!cost.known && w.status !== 'refused') logFor(deps, job)('warn', { billable_units: w.billedUnits }, 'fal sent no readable billed units for a job that ended without images; recorded at $0');
    await ledgerWrite('close job', () => deps.ledger.closeJob({ jobId: job.jobId, status: w.status, upstreamCostMicros: cost.micros, unitsFal: cost.unitsFal, errorCode: w.errorCode }));
  }
  return t.state;
}

function logFor(deps: JobRunnerDeps, job: Job): Log {
  return (level, obj, msg) => deps.logger[level]({ request_id: job.requestId, client_request_id: job.clientRequestId, job_id: job.jobId, model: job.model.id, ...obj }, msg);
}

type Log = (level: 'debug' | 'info' | 'warn' | 'error', obj: object, msg: string) => void;

/**
 * Jobs fal named on refused attempts of this submit (a 503 may still have
 * made one): open `stray` rows, so reconciliation records what they cost.
 */
async function recordStrays(deps: JobRunnerDeps, job: Job, ids: readonly string[], log: Log): Promise<void> {
  if (ids.length === 0) return;
  log('warn', { fal_request_ids: ids }, 'fal named a job on a refused submit attempt; recorded as a stray');
  deps.metrics?.refusals.inc({ reason: 'duplicate_fal_job' }, ids.length);
  await ledgerWrite('stray', () => deps.ledger.recordStrays({ requestId: job.requestId, endpoint: job.endpoint, falRequestIds: ids }));
}

/**
 * Our wait was cut short. Cancel the job; if fal says it already completed,
 * it will bill us, so fetch the result and record (and, if the caller is
 * still there, deliver) it rather than lose it. A cancel fal accepted is only
 * a request (a running job is merely signalled): confirm briefly, and leave
 * whatever stays unknown to reconciliation.
 */
async function cancelOrCollect(deps: JobRunnerDeps, endpoint: string, falRequestId: string, log: Log): Promise<CancelOutcome<FalResult>> {
  const outcome = await deps.fal.cancel(endpoint, falRequestId, { signal: AbortSignal.timeout(10_000) });
  log('info', { fal_request_id: falRequestId, outcome }, 'fal job cancel');
  if (outcome !== 'already_completed' && outcome !== 'cancellation_requested') return { unknown: true };
  const confirmBy = Date.now() + CANCEL_CONFIRM_MS;
  try {
    let st = await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(5_000) });
    while (st.status !== 'COMPLETED') {
      if (Date.now() > confirmBy) return { unknown: true };
      await new Promise((r) => setTimeout(r, 100));
      st = await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(5_000) });
    }
    try {
      return { result: await deps.fal.result(endpoint, falRequestId, { signal: AbortSignal.timeout(30_000) }) };
    } catch (err) {
      if (!(err instanceof FalCallError) || !st.failed) throw err;
      const how = st.failed.errorType === 'client_cancelled' ? 'cancelled' : 'failed';
      return { ended: { how, billedUnits: err.billableUnits ?? null, errorType: st.failed.errorType } };
    }
  } catch (err) {
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
