/**
 * The billing decisions about fal jobs, as pure functions. What fal said (or
 * did not say) about one job moves it from state to state, names the one
 * ledger write that records it and what fal billed for it; the states of a
 * request's jobs decide what the request's ledger row becomes, what the
 * caller is told and whether a retry is safe. No I/O here: the job runner
 * (src/images/job-runner.ts) asks fal, feeds the answers in and performs the
 * writes named here; reconciliation (reconcile.ts) uses the same rules.
 *
 * The billing rule: a caller is charged for the images of a request that
 * completed at fal and was answered 200, or that completed after the caller
 * left (no answer was written), never for a request answered with an error.
 * Every unit fal billed is upstream cost, charged under that rule or
 * recorded as unrecovered.
 *
 * Invariants:
 * - every job has a ledger row before its submit leaves; a job that may
 *   exist at fal is never closed on a guess: it stays open for
 *   reconciliation until fal says what became of it;
 * - a job is closed without images only on fal's word (its status says it
 *   ended with an error, or a cancel removed it), at the units fal billed;
 * - once any job may exist, the caller is never invited to retry.
 */

/** What fal answered when a call failed; `FalCallError` (src/fal/errors.ts) is one. */
export interface FalFailure {
  readonly phase: string;
  readonly kind: 'http' | 'network' | 'aborted' | 'bad_response';
  readonly status: number | undefined;
  /** The call may have created a job we never heard of (a submit without a readable answer). */
  readonly ambiguous: boolean;
  /** On an ambiguous submit: the id fal named on its last answer, which may be the job's. */
  readonly falRequestId?: string | undefined;
}

/** fal's word that a job ended without images, with the units it billed (`x-fal-billable-units`; null when not sent). */
export interface Ended {
  readonly how: 'failed' | 'cancelled';
  readonly billedUnits: string | null;
  /** fal's `error_type`, when it said (or ours, when fal completed the job and we could not use its output). */
  readonly errorType?: string | undefined;
  /** fal completed the job and billed it as a success, but its output could not be used: priced with any prompt-expansion fee. */
  readonly completedAtFal?: boolean | undefined;
}

export type JobState<R, E extends FalFailure = FalFailure> =
  /** The row is written; the submit has not answered. */
  | { readonly at: 'submitting' }
  /** fal refused the submit: no job exists. */
  | { readonly at: 'refused'; readonly error: E }
  /** The submit's outcome is unknown: a job may exist (under `falRequestId`, if fal named one). */
  | { readonly at: 'unknown'; readonly error: E; readonly falRequestId: string | undefined }
  | { readonly at: 'submitted'; readonly falRequestId: string }
  /** The job exists but its id could not be written: metering failed. */
  | { readonly at: 'unrecorded'; readonly falRequestId: string; readonly error: E }
  | { readonly at: 'completed'; readonly falRequestId: string; readonly result: R }
  /** fal ran the job and it ended without images (billed `ended.billedUnits`). */
  | { readonly at: 'failed'; readonly falRequestId: string; readonly error: E; readonly ended: Ended }
  /** Cancelled before it completed (fal may still have billed part of it). */
  | { readonly at: 'cancelled'; readonly falRequestId: string; readonly error: E; readonly ended: Ended }
  /** What became of the job is unknown: reconciliation asks fal later. */
  | { readonly at: 'open'; readonly falRequestId: string; readonly error: E };

/** What fal said, or what our side of a call did, in the order a job meets them. */
export type JobEvent<R, E extends FalFailure = FalFailure> =
  | { readonly type: 'submitted'; readonly falRequestId: string }
  | { readonly type: 'submit_failed'; readonly error: E }
  | { readonly type: 'record_failed'; readonly error: E }
  | { readonly type: 'result'; readonly result: R }
  /**
   * Waiting or fetching the result failed, and we did not cut the wait
   * ourselves; `ended` when fal's status then said the job ended with an error.
   */
  | { readonly type: 'wait_failed'; readonly error: E; readonly ended?: Ended | undefined }
  /** We cut the wait (caller gone, deadline, shutdown, a sibling failed) and asked fal to cancel. */
  | { readonly type: 'cancel_settled'; readonly error: E; readonly outcome: CancelOutcome<R> };

/** After a cancel: fal had completed the job (its result), said it ended without images, or left it unknown. */
export type CancelOutcome<R> = { readonly result: R } | { readonly ended: Ended } | { readonly unknown: true };

/** The ledger write that records a transition. */
export type JobWrite =
  | { readonly write: 'record_submit'; readonly falRequestId: string }
  | {
      readonly write: 'close_job';
      readonly status: 'failed' | 'cancelled' | 'refused' | 'lost';
      /** What fal billed; null when it reported nothing (a `lost` job is then recorded at its estimate, marked as one). */
      readonly billedUnits: string | null;
      readonly errorCode: string;
      /** Priced as a completed job (prompt-expansion fee included). */
      readonly completedAtFal?: true;
      /** A job given up: fal's last answer about it. */
      readonly lastWord?: string;
    };

export interface Transition<R, E extends FalFailure = FalFailure> {
  readonly state: JobState<R, E>;
  readonly write?: JobWrite;
}

export function nextJobState<R, E extends FalFailure>(state: JobState<R, E>, event: JobEvent<R, E>): Transition<R, E> {
  switch (event.type) {
    case 'submitted':
      expect(state, 'submitting', event);
      return { state: { at: 'submitted', falRequestId: event.falRequestId }, write: { write: 'record_submit', falRequestId: event.falRequestId } };
    case 'submit_failed': {
      expect(state, 'submitting', event);
      const e = event.error;
      if (!e.ambiguous) return { state: { at: 'refused', error: e }, write: { write: 'close_job', status: 'refused', billedUnits: '0', errorCode: failureCode(e) } };
      // The id on an ambiguous answer may be the job's: recorded, so reconciliation can ask fal about it.
      const id = e.falRequestId;
      return id ? { state: { at: 'unknown', error: e, falRequestId: id }, write: { write: 'record_submit', falRequestId: id } } : { state: { at: 'unknown', error: e, falRequestId: undefined } };
    }
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
      if (event.ended) return closed(s.falRequestId, event.error, event.ended);
      return { state: { at: 'open', falRequestId: s.falRequestId, error: event.error } };
    }
    case 'cancel_settled': {
      const s = expect(state, 'submitted', event);
      const o = event.outcome;
      if ('result' in o) return { state: { at: 'completed', falRequestId: s.falRequestId, result: o.result } };
      if ('ended' in o) return closed(s.falRequestId, event.error, o.ended);
      return { state: { at: 'open', falRequestId: s.falRequestId, error: event.error } };
    }
  }
}

function closed<R, E extends FalFailure>(falRequestId: string, error: E, ended: Ended): Transition<R, E> {
  const state: JobState<R, E> = ended.how === 'failed' ? { at: 'failed', falRequestId, error, ended } : { at: 'cancelled', falRequestId, error, ended };
  const write: JobWrite = { write: 'close_job', status: ended.how, billedUnits: ended.billedUnits, errorCode: ended.errorType ?? failureCode(error), ...(ended.completedAtFal ? { completedAtFal: true as const } : {}) };
  return { state, write };
}

function expect<R, E extends FalFailure, A extends JobState<R, E>['at']>(state: JobState<R, E>, at: A, event: JobEvent<R, E>): Extract<JobState<R, E>, { at: A }> {
  if (state.at !== at) throw new Error(`job event ${event.type} in state ${state.at}`);
  return state as Extract<JobState<R, E>, { at: A }>;
}

/** Why a request's fal work was cut short by our side, when it was. */
export type StopReason = 'deadline' | 'client_gone' | 'shutdown';

/** What the request's ledger row becomes once every job has a state. */
export type RequestWrite =
  /** Charge the caller for the completed jobs. */
  | { readonly write: 'settle' }
  /**
   * Close the request uncharged and return its hold: the caller is answered
   * with an error, or nothing completed. Completed jobs' cost is recorded as
   * unrecovered; open jobs stay open for reconciliation, for their cost only.
   */
  | { readonly write: 'close'; readonly status: 'released' | 'failed'; readonly errorCode: string }
  /** No answer is written and a job is still open: reconciliation settles the request later. */
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
  /** The jobs whose results are recorded as completed (billed when `ledger` settles). */
  readonly completed: ReadonlyArray<R>;
}

type Final<R, E extends FalFailure> = Exclude<JobState<R, E>, { at: 'submitting' } | { at: 'submitted' }>;

export function decideRequest<R, E extends FalFailure>(jobs: ReadonlyArray<JobState<R, E>>, stopped: StopReason | undefined): RequestDecision<R, E> {
  const ended = jobs.map((j) => {
    if (j.at === 'submitting' || j.at === 'submitted') throw new Error(`request decided with a job still ${j.at}`);
    return j as Final<R, E>;
  });
  const completed = ended.flatMap((j) => (j.at === 'completed' ? [j.result] : []));
  const failures = ended.filter((j): j is Exclude<Final<R, E>, { at: 'completed' }> => j.at !== 'completed');
  if (failures.length === 0) return { ledger: { write: 'settle' }, caller: { answer: 'images' }, completed };

  const primary = (failures.find((f) => f.error.kind !== 'aborted') ?? failures[0]!).error;
  if (failures.some((f) => f.at === 'unrecorded')) return { ledger: { write: 'none' }, caller: { answer: 'metering_unavailable' }, completed };
  // An id on a refused submit is no proof that a job exists (REFERENCE §3b):
  // a refusal alone leaves the retry to the caller, rate limits included.
  const mayExist = ended.some((j) => j.at !== 'refused');
  const caller: CallerOutcome<E> = { answer: 'error', error: primary, retrySafe: !mayExist && !primary.ambiguous };
  const open = failures.some((j) => j.at === 'open' || j.at === 'unknown');

  if (stopped === 'client_gone') {
    // No answer is written: the caller pays for what completes, now or (open jobs) when reconciliation finds it.
    if (open) return { ledger: { write: 'none' }, caller, completed };
    if (completed.length > 0) return { ledger: { write: 'settle' }, caller, completed };
  }
  return { ledger: { write: 'close', status: stopped ? 'released' : 'failed', errorCode: requestCode(primary, stopped) }, caller, completed };
}

function requestCode(err: FalFailure, stopped: StopReason | undefined): string {
  return stopped ?? failureCode(err);
}

function failureCode(err: FalFailure): string {
  return err.phase === 'submit' ? `submit_${err.status ?? err.kind}` : `job_failed_${err.status ?? err.kind}`;
}

/**
 * Reconciliation (reconcile.ts) holds jobs whose end nobody saw: it looks at
 * fal each round (status, then the result or, for a job nobody will
 * receive, a cancel) and applies these rules until every job is final.
 */

/** What one look at fal said about a job still open in the ledger. */
export type FalLook =
  /** fal returned the job's result. */
  | { readonly seen: 'completed' }
  /** fal's status says the job ended without images, billed `ended.billedUnits`. */
  | { readonly seen: 'ended'; readonly ended: Ended }
  /** fal knows no job under this id (404 on its status): nothing ran, nothing billed. */
  | { readonly seen: 'absent' }
  /** Still queued or running at fal. */
  | { readonly seen: 'waiting'; readonly status: 'IN_QUEUE' | 'IN_PROGRESS' }
  /** fal could not say (5xx, unreachable, an unreadable answer, a listing that failed or cannot be matched); the units its answer carried, if any. */
  | { readonly seen: 'unreadable'; readonly lastWord: string; readonly billedUnits: string | null };

export interface LookContext {
  /** The job is older than the give-up deadline (JOB_GIVE_UP_MS): reconciliation stops waiting for fal. */
  readonly pastDeadline: boolean;
  /** Nobody can receive the job's images (its request was answered with an error or closed): a job still running is cancelled. */
  readonly imagesUnwanted: boolean;
}

export type LookStep =
  /** Record fal's result: with the request's settlement when it is still open, as cost only otherwise. */
  | { readonly step: 'complete' }
  /** fal's word ends the job. */
  | { readonly step: 'close'; readonly write: JobWrite & { write: 'close_job' } }
  /** Look again next round, after a cancel at fal when `cancel`. */
  | { readonly step: 'wait'; readonly cancel: boolean }
  /**
   * Stop waiting: `cancel` at fal first (the caller of `afterLook` looks once
   * more, and fal's word then wins), else record the job `lost` with fal's
   * last word and what fal billed, or our estimate when it reported nothing.
   */
  | { readonly step: 'give_up'; readonly cancel: boolean; readonly write: JobWrite & { write: 'close_job' } };

export const GAVE_UP = 'gave_up';

/**
 * How long a job may stay unresolved before it is given up, when
 * JOB_GIVE_UP_MS is not set (config.ts raises it for long request
 * deadlines): an image job fal still runs half an hour after its submit is
 * not coming back, and its request's hold is returned.
 */
export const DEFAULT_GIVE_UP_AFTER_MS = 30 * 60_000;

export function afterLook(look: FalLook, ctx: LookContext): LookStep {
  switch (look.seen) {
    case 'completed':
      return { step: 'complete' };
    case 'ended': {
      const e = look.ended;
      return { step: 'close', write: { write: 'close_job', status: e.how, billedUnits: e.billedUnits, errorCode: e.errorType ?? 'job_failed', ...(e.completedAtFal ? { completedAtFal: true as const } : {}) } };
    }
    case 'absent':
      return { step: 'close', write: { write: 'close_job', status: 'refused', billedUnits: '0', errorCode: 'not_found_at_fal' } };
    case 'waiting':
      if (!ctx.pastDeadline) return { step: 'wait', cancel: ctx.imagesUnwanted };
      return { step: 'give_up', cancel: true, write: { write: 'close_job', status: 'lost', billedUnits: null, errorCode: GAVE_UP, lastWord: look.status } };
    case 'unreadable':
      if (!ctx.pastDeadline) return { step: 'wait', cancel: false };
      return { step: 'give_up', cancel: false, write: { write: 'close_job', status: 'lost', billedUnits: look.billedUnits, errorCode: GAVE_UP, lastWord: look.lastWord } };
  }
}

/** A request reconciliation holds open: each job's state after this round. */
export type ReconciledJob = 'completed' | 'ended' | 'lost' | 'open';

/**
 * An open request is one whose caller got no answer: once every job is
 * final it is settled on the completed ones (the images are the caller's),
 * or closed uncharged when none completed; while any job is open it waits.
 */
export function decideReconciled(jobs: readonly ReconciledJob[]): { readonly write: 'settle' } | { readonly write: 'close'; readonly errorCode: string } | { readonly write: 'wait' } {
  if (jobs.includes('open')) return { write: 'wait' };
  if (jobs.includes('completed')) return { write: 'settle' };
  return { write: 'close', errorCode: jobs.includes('lost') ? GAVE_UP : 'job_failed' };
}
