import type { Logger } from 'pino';
import { FalCallError, type FalGateway } from '../fal/gateway.js';
import type { ModelEntry, ModelRegistry } from '../models/registry.js';
import type { JobRecord, Ledger, RequestWithJobs } from './ledger.js';
import type { Markup } from './money.js';
import { failedJobCost } from './pricing.js';
import { completions, decodePricing, settleCompleted, type BillingEvents, type CompletedJob } from './settlement.js';

/**
 * Finishes what a process left open: it crashed, fal could not be read, a
 * cancel was not confirmed, or a request was answered while some of its
 * jobs still ran. Two passes, both asking fal and applying the job-state
 * rules (job-state.ts):
 * - open requests: each job is looked up at fal; once every job is final,
 *   the request is settled on the completed ones (no answer was written, so
 *   the images are the caller's) or released;
 * - open jobs of closed requests (a request answered with an error, jobs fal
 *   named on refused submit attempts): their cost is recorded, never charged.
 * A request whose submit never answered (a job row with no fal id) is marked
 * orphaned: its hold goes back, and it stays reported.
 *
 * Only rows older than `olderThanMs` are touched, so that with several
 * processes sharing a database one never reconciles another's live request.
 */

export interface ReconcileReport {
  examined: number;
  settled: string[];
  released: string[];
  orphaned: string[];
  /** Jobs still queued or running at fal: looked at again next round. */
  running: string[];
  /** fal could not tell us (unreachable, 5xx): looked at again next round. */
  unresolved: string[];
  /** Unresolved for longer than `giveUpAfterMs`: released and logged as an error. */
  abandoned: string[];
  /** Jobs of closed requests whose end (and cost) this round recorded. */
  jobsClosed: string[];
}

export interface ReconcilerDeps {
  ledger: Ledger;
  fal: FalGateway;
  registry: ModelRegistry;
  markup: Markup;
  logger: Logger;
  now?: () => number;
  giveUpAfterMs?: number;
  /** Set when the billing webhook is on (see settleCompleted). */
  billingEvents?: BillingEvents | undefined;
}

export interface Reconciler {
  run(opts?: { olderThanMs?: number }): Promise<ReconcileReport>;
}

/** What fal says became of one job. */
type Verdict =
  | { kind: 'completed'; job: CompletedJob }
  | { kind: 'ended'; how: 'failed' | 'cancelled'; billedUnits: string | null; errorType: string | undefined; completedAtFal?: boolean }
  /** fal knows no such job (a refused submit's id): nothing ran, nothing billed. */
  | { kind: 'absent' }
  | { kind: 'running' }
  | { kind: 'unknown' };

export function createReconciler(deps: ReconcilerDeps): Reconciler {
  const now = deps.now ?? Date.now;
  const giveUpAfterMs = deps.giveUpAfterMs ?? 24 * 3600_000;

  async function askFal(job: JobRecord): Promise<Verdict> {
    const id = job.falRequestId!;
    let failed: { errorType?: string } | undefined;
    try {
      const st = await deps.fal.status(job.endpoint, id, { signal: AbortSignal.timeout(15_000) });
      if (st.status !== 'COMPLETED') return { kind: 'running' };
      failed = st.failed;
      const r = await deps.fal.result(job.endpoint, id, { signal: AbortSignal.timeout(60_000) });
      return { kind: 'completed', job: { jobId: job.id, falRequestId: id, otherFalId: r.otherFalId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits } };
    } catch (err) {
      // fal answered 200, so the job completed and billed, but its output cannot be used (images we cannot size).
      if (err instanceof FalCallError && err.phase === 'result' && err.kind === 'bad_response' && err.status === 200 && err.output !== undefined) {
        return { kind: 'ended', how: 'failed', billedUnits: err.billableUnits ?? null, errorType: 'unreadable_output', completedAtFal: true };
      }
      if (err instanceof FalCallError && err.kind === 'http') {
        if (err.phase === 'status' && err.status === 404) return { kind: 'absent' };
        if (err.phase === 'result' && failed) {
          const how = failed.errorType === 'client_cancelled' ? 'cancelled' : 'failed';
          return { kind: 'ended', how, billedUnits: err.billableUnits ?? null, errorType: failed.errorType };
        }
      }
      deps.logger.warn({ job_id: job.id, fal_request_id: id, err: (err as Error).message }, 'reconcile: fal could not say what became of the job');
      return { kind: 'unknown' };
    }
  }

  /** Records a final verdict on the job's row; answers whether the job is now final. */
  async function record(job: JobRecord, v: Verdict, model: ModelEntry, pricing: ReturnType<typeof decodePricing>, chargedLater: boolean): Promise<boolean> {
    if (v.kind === 'completed') {
      // A request still open is settled on its completed jobs in one transaction (settleCompleted), not here.
      if (!chargedLater) await deps.ledger.completeJob(completions(model, pricing, [v.job])[0]!);
      return true;
    }
    if (v.kind === 'ended') {
      const cost = failedJobCost(model, v.billedUnits, v.completedAtFal === true && pricing.promptExpansion);
      await deps.ledger.closeJob({ jobId: job.id, status: v.how, upstreamCostMicros: cost.micros, unitsFal: cost.unitsFal, errorCode: v.errorType ?? 'job_failed' });
      return true;
    }
    if (v.kind === 'absent') {
      await deps.ledger.closeJob({ jobId: job.id, status: 'refused', upstreamCostMicros: 0n, errorCode: 'not_found_at_fal' });
      return true;
    }
    return false;
  }

  async function reconcileRequest(r: RequestWithJobs, report: ReconcileReport): Promise<void> {
    const log = deps.logger.child({ request_id: r.id });
    const model = deps.registry.lookup(r.model);
    const jobs = r.jobs.filter((j) => j.kind === 'job');
    if (jobs.length === 0 || jobs.some((j) => j.falRequestId === null && j.status === 'submitting')) {
      await deps.ledger.markOrphaned(r.id);
      report.orphaned.push(r.id);
      log.error({ model: r.model, key_id: r.keyId }, 'reconcile: a submit of the request never answered (crash or lost answer); marked orphaned');
      return;
    }
    if (!model) {
      report.unresolved.push(r.id);
      log.error({ model: r.model }, 'reconcile: the request’s model is no longer in the registry; cannot price it');
      return;
    }
    const pricing = decodePricing(r.pricing, deps.markup);
    const verdicts = await Promise.all(jobs.map((j) => (j.status === 'submitted' || j.status === 'completed' ? askFal(j) : Promise.resolve<Verdict>({ kind: 'absent' }))));
    for (let i = 0; i < jobs.length; i++) if (jobs[i]!.status === 'submitted') await record(jobs[i]!, verdicts[i]!, model, pricing, true);
    if (verdicts.some((v) => v.kind === 'running')) {
      report.running.push(r.id);
      return;
    }
    if (verdicts.some((v) => v.kind === 'unknown')) {
      if (now() - Date.parse(r.createdAt) <= giveUpAfterMs) {
        report.unresolved.push(r.id);
        return;
      }
      for (let i = 0; i < jobs.length; i++) {
        if (verdicts[i]!.kind === 'unknown') await deps.ledger.closeJob({ jobId: jobs[i]!.id, status: 'lost', upstreamCostMicros: 0n, errorCode: 'unresolved_upstream' });
      }
      await deps.ledger.release({ requestId: r.id, status: 'failed', errorCode: 'unresolved_upstream' });
      report.abandoned.push(r.id);
      log.error({ model: r.model }, 'reconcile: gave up on a request fal never resolved; released without charge');
      return;
    }
    const completed = verdicts.flatMap((v) => (v.kind === 'completed' ? [v.job] : []));
    if (completed.length === 0) {
      await deps.ledger.release({ requestId: r.id, status: 'failed', errorCode: 'job_failed' });
      report.released.push(r.id);
      return;
    }
    // No answer was written for this request: the images fal completed are the caller's.
    const out = await settleCompleted(deps.ledger, model, r.id, pricing, completed, { billingEvents: deps.billingEvents });
    report.settled.push(r.id);
    log.info({ charge_usd: out.charge.usd, jobs: completed.length }, 'reconcile: settled a request fal completed');
  }

  /** An open job of a closed request, or a stray: its cost only. */
  async function reconcileJob(job: JobRecord, report: ReconcileReport): Promise<void> {
    const request = await deps.ledger.getRequest(job.requestId);
    const model = request && deps.registry.lookup(request.model);
    if (!request || !model || job.falRequestId === null) return;
    const verdict = await askFal(job);
    if (await record(job, verdict, model, decodePricing(request.pricing, deps.markup), false)) report.jobsClosed.push(job.id);
    else if (verdict.kind === 'unknown' && now() - Date.parse(job.createdAt) > giveUpAfterMs) {
      await deps.ledger.closeJob({ jobId: job.id, status: 'lost', upstreamCostMicros: 0n, errorCode: 'unresolved_upstream' });
      deps.logger.error({ job_id: job.id, fal_request_id: job.falRequestId }, 'reconcile: gave up on a job fal never resolved; its cost is unknown');
    }
  }

  return {
    async run(opts = {}) {
      const report: ReconcileReport = { examined: 0, settled: [], released: [], orphaned: [], running: [], unresolved: [], abandoned: [], jobsClosed: [] };
      const cutoff = new Date(now() - (opts.olderThanMs ?? 0));
      const open = await deps.ledger.listOpen({ createdBefore: cutoff });
      report.examined = open.length;
      const openIds = new Set(open.map((r) => r.id));
      for (const r of open) {
        try {
          await reconcileRequest(r, report);
        } catch (err) {
          report.unresolved.push(r.id);
          deps.logger.error({ err, request_id: r.id }, 'reconcile: failed on a request');
        }
      }
      for (const job of await deps.ledger.listOpenJobs({ createdBefore: cutoff })) {
        if (openIds.has(job.requestId) && job.kind === 'job') continue;
        try {
          await reconcileJob(job, report);
        } catch (err) {
          deps.logger.error({ err, job_id: job.id }, 'reconcile: failed on a job');
        }
      }
      return report;
    },
  };
}
