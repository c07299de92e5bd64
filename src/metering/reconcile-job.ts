import type { Logger } from 'pino';
import { FalCallError, type FalGateway } from '../fal/gateway.js';
import type { ModelEntry } from '../models/registry.js';
import { afterLook, type FalLook, type JobWrite, type LookContext, type ReconciledJob } from './job-state.js';
import type { JobRecord, Ledger } from './ledger.js';
import { failedJobCost } from './pricing.js';
import { completions, type CompletedJob, type RequestPricing } from './settlement.js';

/**
 * One open job, one round of reconciliation: look at fal (status, then the
 * result), apply the job-state rules (`afterLook`), and perform what they
 * name: record fal's result or its word that the job ended, cancel a job
 * nobody will receive, or give the job up as `lost` once it is past the
 * give-up deadline, at what fal billed or, when fal reported nothing, the
 * job's estimate marked as one.
 */

export interface JobLookDeps {
  ledger: Ledger;
  fal: FalGateway;
  logger: Logger;
}

/** How long one look may wait for each of fal's answers. */
const STATUS_TIMEOUT_MS = 15_000;
const RESULT_TIMEOUT_MS = 60_000;
const CANCEL_TIMEOUT_MS = 10_000;

/** fal's answer on a look, and the job's result when fal gave it. */
export interface Look {
  look: FalLook;
  completed?: CompletedJob;
}

/** `within`, when given, also ends the look (a caller's own time budget). */
export async function lookAtFal(deps: JobLookDeps, job: JobRecord, within?: AbortSignal): Promise<Look> {
  const id = job.falRequestId!;
  const bound = (ms: number) => (within ? AbortSignal.any([AbortSignal.timeout(ms), within]) : AbortSignal.timeout(ms));
  let failed: { errorType?: string } | undefined;
  try {
    const st = await deps.fal.status(job.endpoint, id, { signal: bound(STATUS_TIMEOUT_MS) });
    if (st.status !== 'COMPLETED') return { look: { seen: 'waiting', status: st.status } };
    failed = st.failed;
    const r = await deps.fal.result(job.endpoint, id, { signal: bound(RESULT_TIMEOUT_MS) });
    const completed = { jobId: job.id, falRequestId: id, otherFalId: r.otherFalId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits };
    return { look: { seen: 'completed' }, completed };
  } catch (err) {
    return { look: failedLook(err, failed) };
  }
}

/** A status or result call failed: fal's word when its answers make one, else what it last said. */
function failedLook(err: unknown, failed: { errorType?: string } | undefined): FalLook {
  if (!(err instanceof FalCallError)) return { seen: 'unreadable', lastWord: `error: ${(err as Error)?.message}`, billedUnits: null };
  // fal answered the result 200, so the job completed and billed, but its output cannot be used (images we cannot size).
  if (err.phase === 'result' && err.kind === 'bad_response' && err.status === 200 && err.output !== undefined) {
    return { seen: 'ended', ended: { how: 'failed', billedUnits: err.billableUnits ?? null, errorType: 'unreadable_output', completedAtFal: true } };
  }
  if (err.kind === 'http' && err.phase === 'status' && err.status === 404) return { seen: 'absent' };
  if (err.kind === 'http' && err.phase === 'result' && failed) {
    const how = failed.errorType === 'client_cancelled' ? 'cancelled' : 'failed';
    return { seen: 'ended', ended: { how, billedUnits: err.billableUnits ?? null, errorType: failed.errorType } };
  }
  return { seen: 'unreadable', lastWord: `${err.phase} ${err.status ?? err.kind}`, billedUnits: err.billableUnits ?? null };
}

export interface StepInput {
  job: JobRecord;
  model: ModelEntry;
  pricing: RequestPricing;
  ctx: LookContext;
  /** The request is still open: a completed job is recorded with its settlement, not here. */
  requestOpen: boolean;
}

/** One round for one job: its state afterwards, and its result when fal completed it. */
export async function stepJob(deps: JobLookDeps, input: StepInput): Promise<{ state: ReconciledJob; completed?: CompletedJob; look: FalLook }> {
  const { job, ctx } = input;
  const log = deps.logger.child({ request_id: job.requestId, job_id: job.id, fal_request_id: job.falRequestId });
  let seen = await lookAtFal(deps, job);
  let step = afterLook(seen.look, ctx);
  if ((step.step === 'wait' || step.step === 'give_up') && step.cancel) {
    const outcome = await deps.fal.cancel(job.endpoint, job.falRequestId!, { signal: AbortSignal.timeout(CANCEL_TIMEOUT_MS) });
    log.info({ outcome, status: seen.look.seen === 'waiting' ? seen.look.status : undefined, giving_up: step.step === 'give_up' }, 'reconcile: asked fal to cancel a job nobody will receive');
    if (step.step === 'give_up') {
      // fal's word after the cancel wins over giving up (a queued job removed, a job that completed meanwhile).
      seen = await lookAtFal(deps, job);
      step = afterLook(seen.look, ctx);
    }
  }
  switch (step.step) {
    case 'complete':
      if (!input.requestOpen) await deps.ledger.completeJob(completions(input.model, input.pricing, [seen.completed!])[0]!);
      return { state: 'completed', completed: seen.completed!, look: seen.look };
    case 'close': {
      const w = step.write;
      const cost = failedJobCost(input.model, w.billedUnits, w.completedAtFal === true && input.pricing.promptExpansion);
      await deps.ledger.closeJob({ jobId: job.id, status: w.status, upstreamCostMicros: cost.micros, unitsFal: cost.unitsFal, errorCode: w.errorCode });
      return { state: 'ended', look: seen.look };
    }
    case 'wait':
      return { state: 'open', look: seen.look };
    case 'give_up':
      await giveUp(deps, job, step.write, input.model);
      return { state: 'lost', look: seen.look };
  }
}

/**
 * Records a job given up as `lost`: at what fal billed when its last answer
 * said, else at the job's estimate (what it would cost completed as asked),
 * marked as an estimate. Logged as an error: an operator should know.
 */
export async function giveUp(deps: JobLookDeps, job: JobRecord, write: JobWrite & { write: 'close_job' }, model: ModelEntry | undefined): Promise<boolean> {
  const reported = model && write.billedUnits !== null ? failedJobCost(model, write.billedUnits) : undefined;
  const estimated = !reported?.known;
  const cost = reported?.known ? reported.micros : (job.estimateMicros ?? 0n);
  const out = await deps.ledger.closeJob({
    jobId: job.id,
    status: 'lost',
    upstreamCostMicros: cost,
    unitsFal: reported?.unitsFal ?? null,
    errorCode: write.errorCode,
    costEstimated: estimated,
    falLastWord: write.lastWord ?? null,
  });
  if (out.changed) {
    deps.logger.error(
      { request_id: job.requestId, job_id: job.id, fal_request_id: job.falRequestId, fal_last_word: write.lastWord, upstream_cost_micros: String(cost), cost_estimated: estimated },
      estimated ? 'reconcile: gave up on a job fal never resolved; recorded lost at its estimated cost' : 'reconcile: gave up on a job fal never resolved; recorded lost at the cost fal reported',
    );
  }
  return out.changed;
}
