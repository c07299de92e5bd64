import type { Logger } from 'pino';
import { FalCallError, type FalGateway } from '../fal/gateway.js';
import { provesJobFailed } from './job-state.js';
import type { ModelRegistry } from '../models/registry.js';
import type { Ledger, RequestWithJobs } from './ledger.js';
import type { Markup } from './money.js';
import { decodePricing, settleCompleted, type BillingEvents, type CompletedJob } from './settlement.js';

/**
 * Finishes the requests a process left open: it crashed, fal could not be
 * read, or a cancel was not confirmed. Each open request's fal jobs are looked
 * up at fal and the request is settled (fal completed jobs: billed on the
 * images they returned) or released (jobs failed or were cancelled). A
 * request with no fal id (a crash between sending submit and saving its
 * answer) is marked orphaned and reported: we cannot know whether fal ran it.
 *
 * Only requests older than `olderThanMs` are touched, so that with several
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

type JobVerdict = { kind: 'completed'; job: CompletedJob } | { kind: 'ended' } | { kind: 'running' } | { kind: 'unknown' };

export function createReconciler(deps: ReconcilerDeps): Reconciler {
  const now = deps.now ?? Date.now;
  const giveUpAfterMs = deps.giveUpAfterMs ?? 24 * 3600_000;

  async function judgeJob(endpoint: string, falRequestId: string, ledgerStatus: string): Promise<JobVerdict> {
    if (ledgerStatus === 'failed' || ledgerStatus === 'cancelled' || ledgerStatus === 'duplicate') return { kind: 'ended' };
    try {
      const st = await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(15_000) });
      if (st.status !== 'COMPLETED') return { kind: 'running' };
      const r = await deps.fal.result(endpoint, falRequestId, { signal: AbortSignal.timeout(60_000) });
      return { kind: 'completed', job: { falRequestId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits } };
    } catch (err) {
      if (err instanceof FalCallError && (provesJobFailed(err) || (err.kind === 'http' && err.status === 404 && err.phase === 'status'))) {
        await deps.ledger.failJob({ falRequestId, status: 'failed' });
        return { kind: 'ended' };
      }
      deps.logger.warn({ fal_request_id: falRequestId, err: (err as Error).message }, 'reconcile: fal could not say what became of the job');
      return { kind: 'unknown' };
    }
  }

  async function reconcileOne(r: RequestWithJobs, report: ReconcileReport): Promise<void> {
    const log = deps.logger.child({ request_id: r.id });
    if (r.jobs.length === 0) {
      await deps.ledger.markOrphaned(r.id);
      report.orphaned.push(r.id);
      log.error({ model: r.model, key_id: r.keyId }, 'reconcile: request has no fal request id (crash between submit and its answer); marked orphaned');
      return;
    }
    const model = deps.registry.lookup(r.model);
    const verdicts = await Promise.all(r.jobs.map((j) => judgeJob(j.endpoint, j.falRequestId, j.status)));
    if (verdicts.some((v) => v.kind === 'running')) {
      report.running.push(r.id);
      return;
    }
    if (verdicts.some((v) => v.kind === 'unknown') || !model) {
      if (now() - Date.parse(r.createdAt) > giveUpAfterMs) {
        await deps.ledger.release({ requestId: r.id, status: 'failed', errorCode: 'unresolved_upstream' });
        report.abandoned.push(r.id);
        log.error({ model: r.model }, 'reconcile: gave up on a request fal never resolved; released without charge');
      } else {
        report.unresolved.push(r.id);
        if (!model) log.error({ model: r.model }, 'reconcile: the request’s model is no longer in the registry; cannot price it');
      }
      return;
    }
    const completed = verdicts.flatMap((v) => (v.kind === 'completed' ? [v.job] : []));
    if (completed.length === 0) {
      await deps.ledger.release({ requestId: r.id, status: 'failed', errorCode: 'job_failed' });
      report.released.push(r.id);
      return;
    }
    const out = await settleCompleted(deps.ledger, model, r.id, decodePricing(r.pricing, deps.markup), completed, { billingEvents: deps.billingEvents });
    report.settled.push(r.id);
    log.info({ charge_usd: out.charge.usd, jobs: completed.length }, 'reconcile: settled a request fal completed');
  }

  return {
    async run(opts = {}) {
      const report: ReconcileReport = { examined: 0, settled: [], released: [], orphaned: [], running: [], unresolved: [], abandoned: [] };
      const open = await deps.ledger.listOpen({ createdBefore: new Date(now() - (opts.olderThanMs ?? 0)) });
      report.examined = open.length;
      for (const r of open) {
        try {
          await reconcileOne(r, report);
        } catch (err) {
          report.unresolved.push(r.id);
          deps.logger.error({ err, request_id: r.id }, 'reconcile: failed on a request');
        }
      }
      return report;
    },
  };
}
