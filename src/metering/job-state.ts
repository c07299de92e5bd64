/**
 * The billing decisions about fal jobs, as pure functions: what fal said
 * about one job moves it from state to state and names the one ledger write
 * that records it; the states of a request's jobs decide what the request's
 * ledger row becomes and what the caller is told. No I/O here: the job runner
 * (src/images/job-runner.ts) asks fal, feeds the answers in and performs the
 * writes named here.
 *
 * Invariants:
 * - a job that may exist at fal is never forgotten: it is recorded, left open
 *   for reconciliation, or (id unknown) keeps its request orphaned;
 * - only a job fal proved it did not run to completion (its result answered
 *   4xx, or it was cancelled before completing) is closed unbilled;
 * - once any job may exist, the caller is never invited to retry.
 */

/** What fal answered when a call failed; `FalCallError` (src/fal/gateway.ts) is one. */
export interface FalFailure {
  readonly phase: string;
  readonly kind: 'http' | 'network' | 'aborted' | 'bad_response';
  readonly status: number | undefined;
  /** The call may have created a job we never heard of (a submit without a readable answer). */
  readonly ambiguous: boolean;
}

export type JobState<R, E extends FalFailure = FalFailure> =
  | { readonly at: 'new' }
  /** fal refused the submit: no job exists. */
  | { readonly at: 'refused'; readonly error: E }
  /** The submit's outcome is unknown: a job may exist whose id we never learnt. */
  | { readonly at: 'unknown'; readonly error: E }
  | { readonly at: 'submitted'; readonly falRequestId: string }
  /** The job exists but its id could not be written: metering failed. */
  | { readonly at: 'unrecorded'; readonly falRequestId: string; readonly error: E }
  | { readonly at: 'completed'; readonly falRequestId: string; readonly result: R }
  /** fal ran the job and it failed on its input. */
  | { readonly at: 'failed'; readonly falRequestId: string; readonly error: E }
  /** Cancelled before it completed. */
  | { readonly at: 'cancelled'; readonly falRequestId: string; readonly error: E }
  /** What became of the job is unknown: reconciliation asks fal later. */
  | { readonly at: 'open'; readonly falRequestId: string; readonly error: E };

/** What fal said, or what our side of a call did, in the order a job meets them. */
export type JobEvent<R, E extends FalFailure = FalFailure> =
  | { readonly type: 'submitted'; readonly falRequestId: string }
  | { readonly type: 'submit_failed'; readonly error: E }
  | { readonly type: 'record_failed'; readonly error: E }
  | { readonly type: 'result'; readonly result: R }
  /** Waiting or fetching the result failed, and we did not cut the wait ourselves. */
  | { readonly type: 'wait_failed'; readonly error: E }
  /** We cut the wait (caller gone, deadline, shutdown, a sibling failed) and asked fal to cancel. */
  | { readonly type: 'cancel_settled'; readonly error: E; readonly outcome: CancelOutcome<R> };

/** After a cancel: fal had completed the job (its result), proved it ended unrun, or left it unknown. */
export type CancelOutcome<R> = { readonly result: R } | { readonly cancelled: true } | { readonly unknown: true };

/** The ledger write that records a transition. */
export type JobWrite = { readonly write: 'record_submit'; readonly falRequestId: string } | { readonly write: 'close_job'; readonly falRequestId: string; readonly status: 'failed' | 'cancelled' };

export interface Transition<R, E extends FalFailure = FalFailure> {
  readonly state: JobState<R, E>;
  readonly write?: JobWrite;
}

/**
 * A result fetch answered 4xx (not 429): the job itself ended without
 * images. A 5xx or an unreadable answer may stand in front of a finished,
 * billed job, so it proves nothing.
 */
export function provesJobFailed(e: FalFailure): boolean {
  return e.phase === 'result' && e.kind === 'http' && e.status !== undefined && e.status >= 400 && e.status < 500 && e.status !== 429;
}

export function nextJobState<R, E extends FalFailure>(state: JobState<R, E>, event: JobEvent<R, E>): Transition<R, E> {
  switch (event.type) {
    case 'submitted':
      expect(state, 'new', event);
      return { state: { at: 'submitted', falRequestId: event.falRequestId }, write: { write: 'record_submit', falRequestId: event.falRequestId } };
    case 'submit_failed':
      expect(state, 'new', event);
      return { state: event.error.ambiguous ? { at: 'unknown', error: event.error } : { at: 'refused', error: event.error } };
    case 'record_failed': {
      const s = expect(state, 'submitted', event);
      return { state: { at: 'unrecorded', falRequestId: s.falRequestId, error: event.error } };
    }
    case 'result': {
      const s = expect(state, 'submitted', event);
      return { state: { at: 'completed', falRequestId: s.falRequestId, result: event.result } };
    }
    case 'wait_failed': {
      const s = expect(state, 'submitted', event);
      if (provesJobFailed(event.error)) return closed(s.falRequestId, 'failed', event.error);
      return { state: { at: 'open', falRequestId: s.falRequestId, error: event.error } };
    }
    case 'cancel_settled': {
      const s = expect(state, 'submitted', event);
      const o = event.outcome;
      if ('result' in o) return { state: { at: 'completed', falRequestId: s.falRequestId, result: o.result } };
      if ('cancelled' in o) return closed(s.falRequestId, 'cancelled', event.error);
      return { state: { at: 'open', falRequestId: s.falRequestId, error: event.error } };
    }
  }
}

function closed<R, E extends FalFailure>(falRequestId: string, status: 'failed' | 'cancelled', error: E): Transition<R, E> {
  return { state: { at: status, falRequestId, error }, write: { write: 'close_job', falRequestId, status } };
}

function expect<R, E extends FalFailure, A extends JobState<R, E>['at']>(state: JobState<R, E>, at: A, event: JobEvent<R, E>): Extract<JobState<R, E>, { at: A }> {
  if (state.at !== at) throw new Error(`job event ${event.type} in state ${state.at}`);
  return state as Extract<JobState<R, E>, { at: A }>;
}

/** Why a request's fal work was cut short by our side, when it was. */
export type StopReason = 'deadline' | 'client_gone' | 'shutdown';

/** What the request's ledger row becomes once every job has a state. */
export type RequestWrite =
  /** Bill the completed jobs (all of them, or those that finished before the others failed). */
  | { readonly write: 'settle' }
  /** Nothing can bill: return the reservation. */
  | { readonly write: 'release'; readonly status: 'released' | 'failed'; readonly errorCode: string }
  /** Jobs may exist that we have no id for: keep the reservation visible. */
  | { readonly write: 'orphan' }
  /** Some job is open: reconciliation settles the request later. */
  | { readonly write: 'none' };

export type CallerOutcome<E extends FalFailure = FalFailure> =
  | { readonly answer: 'images' }
  /** The ledger could not record a job: nothing may be served unmetered. */
  | { readonly answer: 'metering_unavailable' }
  /** `error` is the root cause (not a sibling we cut because of it); `retrySafe` is false once any job may exist. */
  | { readonly answer: 'error'; readonly error: E; readonly retrySafe: boolean };

export interface RequestDecision<R, E extends FalFailure = FalFailure> {
  readonly ledger: RequestWrite;
  readonly caller: CallerOutcome<E>;
  /** The jobs whose results are billed. */
  readonly completed: ReadonlyArray<R>;
}

type Ended<R, E extends FalFailure> = Exclude<JobState<R, E>, { at: 'new' } | { at: 'submitted' }>;

export function decideRequest<R, E extends FalFailure>(jobs: ReadonlyArray<JobState<R, E>>, stopped: StopReason | undefined): RequestDecision<R, E> {
  const ended = jobs.map((j) => {
    if (j.at === 'new' || j.at === 'submitted') throw new Error(`request decided with a job still ${j.at}`);
    return j as Ended<R, E>;
  });
  const completed = ended.flatMap((j) => (j.at === 'completed' ? [j.result] : []));
  const failures = ended.filter((j): j is Exclude<Ended<R, E>, { at: 'completed' }> => j.at !== 'completed');
  if (failures.length === 0) return { ledger: { write: 'settle' }, caller: { answer: 'images' }, completed };

  const primary = (failures.find((f) => f.error.kind !== 'aborted') ?? failures[0]!).error;
  // An id on a refused submit (recorded as a duplicate, in case) is no proof that a job exists
  // (REFERENCE §3b): a refusal alone leaves the retry to the caller, rate limits included.
  const mayExist = (j: Ended<R, E>): boolean => j.at === 'completed' || j.at === 'open' || j.at === 'unknown' || j.at === 'unrecorded' || j.error.phase !== 'submit';
  const caller: CallerOutcome<E> = failures.some((f) => f.at === 'unrecorded')
    ? { answer: 'metering_unavailable' }
    : { answer: 'error', error: primary, retrySafe: !ended.some(mayExist) && !primary.ambiguous };
  if (caller.answer === 'metering_unavailable') return { ledger: { write: 'none' }, caller, completed };

  const open = (j: Ended<R, E>) => j.at === 'open' || j.at === 'unknown';
  let ledger: RequestWrite;
  if (!failures.some(open)) {
    ledger = completed.length > 0 ? { write: 'settle' } : { write: 'release', status: stopped ? 'released' : 'failed', errorCode: failureCode(primary, stopped) };
  } else if (ended.every((j) => j.at === 'unknown')) {
    ledger = { write: 'orphan' };
  } else {
    ledger = { write: 'none' };
  }
  return { ledger, caller, completed };
}

function failureCode(err: FalFailure, stopped: StopReason | undefined): string {
  if (stopped) return stopped;
  return err.phase === 'submit' ? `submit_${err.status ?? err.kind}` : `job_failed_${err.status ?? err.kind}`;
}
