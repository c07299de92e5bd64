import type { Logger } from 'pino';
import { FalCallError, type FalGateway } from '../fal/gateway.js';
import type { ModelEntry, ModelRegistry } from '../models/registry.js';
import type { JobRecord, Ledger, ListOpenOptions, RequestWithJobs } from './ledger.js';
import type { Markup } from './money.js';
import { failedJobCost } from './pricing.js';
import { SUBMIT_TIMEOUT_MS } from '../fal/submit-once.js';
import { groupByWindow, inputHash, judgeLostSubmit, submitWindow, type ListedInput } from './lost-submits.js';
import type { LeaseStore } from './lease-store.js';
import { mayReconcile, nextForeignExpiry, reconcileScope, type ReconcileScope } from './leases.js';
import { HOLDING } from './ledger-statements.js';
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
 * Before both, submits whose answer never came (a job row still
 * `submitting`, no fal id) are looked for in fal's request listing
 * (lost-submits.ts): found, the job takes fal's id and the passes below
 * settle it like any job; fal listing nothing once the submit's window has
 * closed, it is closed `refused` at $0. A request with such a job stays open
 * (its hold kept) until the search ends, or gives up after `giveUpAfterMs`.
 *
 * Which rows a round touches is the lease rule (leases.ts): those of a
 * dead owner at once, the process's own (and lease-less ones) once older than
 * `olderThanMs`, another live process's never. Without `leases`, only rows
 * older than `olderThanMs` are touched.
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
  /** Lost submits found in fal's request listing: the job now has fal's id. */
  lostFound: string[];
  /** Lost submits fal's listing shows no request for: closed `refused`, $0. */
  lostAbsent: string[];
  /**
   * When the earliest live lease of another process that owns open requests
   * expires (epoch ms): if that process is dead, a round then settles them.
   */
  nextLeaseExpiryMs?: number | undefined;
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
  /** How long a submit may take before it gives up (the job runner's SUBMIT_TIMEOUT_MS): the end of a lost submit's window. */
  submitTimeoutMs?: number;
  /** The process's lease and the table of all of them: which rows a round may touch (leases.ts). */
  leases?: { store: LeaseStore; ownLeaseId: string } | undefined;
}

export interface Reconciler {
  run(opts?: { olderThanMs?: number }): Promise<ReconcileReport>;
  /**
   * One request, at once, when the lease rule lets this process touch it
   * (an Idempotency-Key retry asks for its request once the process that
   * took it is dead). Answers false when the request is not open or the
   * rule forbids it. A lost submit among its jobs is left to the rounds,
   * whose search lists a window of fal's requests.
   */
  reconcileOne(requestId: string, opts?: { olderThanMs?: number }): Promise<boolean>;
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
  const lostSubmitDeps = { ...deps, now, giveUpAfterMs, submitTimeoutMs: deps.submitTimeoutMs ?? SUBMIT_TIMEOUT_MS };

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
    if (jobs.length === 0) {
      await deps.ledger.markOrphaned(r.id);
      report.orphaned.push(r.id);
      log.error({ model: r.model, key_id: r.keyId }, 'reconcile: a request with no job row; marked orphaned');
      return;
    }
    if (!model) {
      report.unresolved.push(r.id);
      log.error({ model: r.model }, 'reconcile: the request’s model is no longer in the registry; cannot price it');
      return;
    }
    const pricing = decodePricing(r.pricing, deps.markup);
    // A submit still unanswered is being looked for in fal's listing (findLostSubmits): unknown until that search ends.
    const verdicts = await Promise.all(jobs.map((j) => (j.status === 'submitted' || j.status === 'completed' ? askFal(j) : Promise.resolve<Verdict>({ kind: j.status === 'submitting' ? 'unknown' : 'absent' }))));
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
      const report: ReconcileReport = { examined: 0, settled: [], released: [], orphaned: [], running: [], unresolved: [], abandoned: [], jobsClosed: [], lostFound: [], lostAbsent: [] };
      const olderThanMs = opts.olderThanMs ?? 0;
      const nowMs = now();
      let scope: ReconcileScope | undefined;
      if (deps.leases) {
        const { store, ownLeaseId } = deps.leases;
        const leases = await store.list();
        scope = reconcileScope({ ownLeaseId, leases, nowMs, olderThanMs });
        const owners = await store.ownersOfOpenRequests(scope.live.filter((id) => id !== ownLeaseId));
        report.nextLeaseExpiryMs = nextForeignExpiry(leases, owners, ownLeaseId, nowMs);
      }
      const which = { createdBefore: new Date(nowMs - olderThanMs), scope };
      try {
        await findLostSubmits(lostSubmitDeps, which, report);
      } catch (err) {
        deps.logger.error({ err }, 'reconcile: the search for lost submits failed');
      }
      const open = await deps.ledger.listOpen(which);
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
      for (const job of await deps.ledger.listOpenJobs(which)) {
        if (openIds.has(job.requestId) && job.kind === 'job') continue;
        try {
          await reconcileJob(job, report);
        } catch (err) {
          deps.logger.error({ err, job_id: job.id }, 'reconcile: failed on a job');
        }
      }
      return report;
    },

    async reconcileOne(requestId, opts = {}) {
      const r = await deps.ledger.getRequest(requestId);
      if (!r || !HOLDING.includes(r.status) || !deps.leases) return false;
      const scope = reconcileScope({ ownLeaseId: deps.leases.ownLeaseId, leases: await deps.leases.store.list(), nowMs: now(), olderThanMs: opts.olderThanMs ?? 0 });
      if (!mayReconcile(r, scope)) return false;
      const report: ReconcileReport = { examined: 1, settled: [], released: [], orphaned: [], running: [], unresolved: [], abandoned: [], jobsClosed: [], lostFound: [], lostAbsent: [] };
      await reconcileRequest(r, report);
      if (report.settled.length + report.released.length + report.abandoned.length > 0) deps.logger.info({ request_id: requestId, reconcile: report }, 'reconciled a request on its Idempotency-Key retry');
      return true;
    },
  };
}

interface LostSubmitDeps {
  ledger: Ledger;
  fal: FalGateway;
  logger: Logger;
  now: () => number;
  giveUpAfterMs: number;
  submitTimeoutMs: number;
}

/**
 * Submits whose answer never came, looked for in fal's request listing
 * (lost-submits.ts): one listing per endpoint and overlapping windows. A
 * listing that fails is tried again next round; a job that cannot be told
 * (fal stored no inputs, X-Fal-Store-IO: 0) stays open until `giveUpAfterMs`,
 * then is closed `lost`.
 */
async function findLostSubmits(deps: LostSubmitDeps, which: ListOpenOptions, report: ReconcileReport): Promise<void> {
  const lost = await deps.ledger.listLostSubmits(which);
  const jobs = lost.map((job) => ({ job, endpoint: job.endpoint, window: submitWindow(Date.parse(job.createdAt), deps.submitTimeoutMs) }));
  for (const group of groupByWindow(jobs)) {
    let items: ListedInput[];
    try {
      // Each input is hashed as it comes and dropped: only ids, times and hashes are kept.
      items = (await deps.fal.listRequests(group.endpoint, group.window, { signal: AbortSignal.timeout(120_000) })).map((i) => ({ requestId: i.requestId, sentAtMs: i.sentAtMs, inputHash: i.input === null ? null : inputHash(i.input) }));
    } catch (err) {
      deps.logger.warn({ endpoint: group.endpoint, jobs: group.jobs.map((j) => j.job.id), err: (err as Error).message }, 'reconcile: fal’s request listing failed; lost submits are looked for again next round');
      for (const { job } of group.jobs) await giveUpIfStale(deps, job, 'listing_failed');
      continue;
    }
    const hashes = new Set(group.jobs.map((j) => j.job.inputHash));
    // The ledger is asked only about the requests that could be ours: a matching input, or none stored.
    const taken = await deps.ledger.knownFalIds(items.filter((i) => i.inputHash === null || hashes.has(i.inputHash)).map((i) => i.requestId));
    for (const { job, window } of group.jobs) {
      const verdict = judgeLostSubmit({ inputHash: job.inputHash, createdAtMs: Date.parse(job.createdAt) }, items, taken, window, deps.now());
      const log = deps.logger.child({ request_id: job.requestId, job_id: job.id });
      try {
        if (verdict.kind === 'found') {
          taken.add(verdict.falRequestId);
          // If the submit's own answer is recorded meanwhile, it is the same id (the listing excluded every id held): a no-op.
          await deps.ledger.recordSubmit({ jobId: job.id, falRequestId: verdict.falRequestId });
          report.lostFound.push(job.id);
          log.warn({ fal_request_id: verdict.falRequestId }, 'reconcile: a submit whose answer was lost made a job at fal; recorded under fal’s id');
        } else if (verdict.kind === 'absent') {
          await deps.ledger.closeJob({ jobId: job.id, status: 'refused', upstreamCostMicros: 0n, errorCode: 'not_listed_at_fal' });
          report.lostAbsent.push(job.id);
          log.info('reconcile: fal lists no request for a submit whose answer was lost; closed refused at $0');
        } else if (verdict.kind === 'unmatchable') {
          log.warn({ unreadable: verdict.unreadable, has_hash: job.inputHash !== null }, 'reconcile: a lost submit cannot be matched in fal’s listing (inputs not stored); left open');
          await giveUpIfStale(deps, job, 'unmatchable');
        }
      } catch (err) {
        log.error({ err }, 'reconcile: failed on a lost submit');
      }
    }
  }
}

/** A lost submit unresolved for longer than `giveUpAfterMs` is closed `lost` at $0, as other jobs fal never resolved. */
async function giveUpIfStale(deps: LostSubmitDeps, job: JobRecord, why: string): Promise<void> {
  if (deps.now() - Date.parse(job.createdAt) <= deps.giveUpAfterMs) return;
  const out = await deps.ledger.closeJob({ jobId: job.id, status: 'lost', upstreamCostMicros: 0n, errorCode: 'unresolved_upstream' });
  if (out.changed) deps.logger.error({ request_id: job.requestId, job_id: job.id, why }, 'reconcile: gave up looking for a lost submit at fal; its cost is unknown');
}
