import type { Logger } from 'pino';
import type { FalGateway } from '../fal/gateway.js';
import type { ModelEntry, ModelRegistry } from '../models/registry.js';
import { DEFAULT_GIVE_UP_AFTER_MS, GAVE_UP, decideReconciled, type ReconciledJob } from './job-state.js';
import type { JobRecord, Ledger, ListOpenOptions, RequestWithJobs } from './ledger.js';
import type { Markup } from './money.js';
import type { LeaseStore } from './lease-store.js';
import { mayReconcile, nextForeignExpiry, reconcileScope, type ReconcileScope } from './leases.js';
import { HOLDING } from './ledger-statements.js';
import { createLateWord, type LateWord } from './late-word.js';
import { findLostSubmits } from './lost-submit-search.js';
import { SUBMIT_TIMEOUT_MS } from './lost-submits.js';
import { lookAtFal, stepJob } from './reconcile-job.js';
import type { PendingCloses } from './pending-closes.js';
import { closeUncharged, decodePricing, settleCompleted, type BillingEvents, type CompletedJob, type RequestPricing } from './settlement.js';

/**
 * Finishes what a process left open: it crashed, fal could not be read, a
 * cancel was not confirmed, or a request was answered while some of its
 * jobs still ran. Each open job is looked at in fal (status, then the result
 * or a cancel) and moved by the job-state rules (job-state.ts, `afterLook`)
 * until it is final (reconcile-job.ts):
 * - open requests (no answer was written): once every job is final, the
 *   request is settled on the completed ones (the images are the caller's)
 *   or closed uncharged;
 * - open jobs of closed requests (a request answered with an error, jobs fal
 *   named on refused submit attempts): their cost is recorded, never
 *   charged, and a job still running is cancelled: nobody will receive it.
 * Before both, submits whose answer never came are looked for in fal's
 * request listing (lost-submit-search.ts).
 *
 * Nothing waits for fal forever: a job older than `giveUpAfterMs`
 * (JOB_GIVE_UP_MS) that fal still reports running (after a last cancel) or
 * cannot say anything about is given up as `lost`, at what fal billed or its
 * estimate marked as one, and its request's hold is released.
 *
 * Which rows a round touches is the lease rule (leases.ts): those of a
 * dead owner at once, the process's own at once unless it is working on
 * them (`inFlight`; without it, once older than `olderThanMs`), lease-less
 * ones once older than `olderThanMs`, another live process's never. A dead owner's request is first taken over (its `lease_id` becomes
 * this process's lease, in one conditional write): should the owner be
 * alive after all, its own writes to the request then fail instead of
 * racing this round (ledger.ts). Without `leases`, only rows older than
 * `olderThanMs` are touched.
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
  /** Requests closed because a job was given up (`lost`): released, logged as an error. */
  abandoned: string[];
  /** Jobs of closed requests whose end (and cost) this round recorded. */
  jobsClosed: string[];
  /** Lost submits found in fal's request listing: the job now has fal's id. */
  lostFound: string[];
  /** Lost submits fal's listing shows no request for: closed `refused`, $0. */
  lostAbsent: string[];
  /** Jobs given up as `lost` that fal completed later: now at fal's cost, nobody charged (late-word.ts). */
  lateCompleted: string[];
  /** Requests of a dead owner this round took over. */
  adopted: string[];
  /** Requests answered with an error while the ledger was down, closed uncharged from DATA_DIR (pending-closes.ts). */
  pendingClosed: string[];
  /** Expired leases no open request names, deleted. */
  leasesRemoved: number;
  /** Budget slices of processes no longer live (or this one's, no longer used) returned to their keys. */
  slicesReturned?: number;
  /** The round did nothing: this process's own lease is not known live. */
  skipped?: 'lease_expired';
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
  /** JOB_GIVE_UP_MS: how old a job fal never resolved may get before it is given up as `lost`. */
  giveUpAfterMs?: number;
  /** Set when the billing webhook is on (see settleCompleted). */
  billingEvents?: BillingEvents | undefined;
  /** How long a submit may take before it gives up (the job runner's SUBMIT_TIMEOUT_MS): the end of a lost submit's window. */
  submitTimeoutMs?: number;
  /**
   * The process's lease and the table of all of them: which rows a round may
   * touch (leases.ts). While `valid` says the own lease is not known live, a
   * round does nothing.
   */
  leases?: { store: LeaseStore; ownLeaseId: string; valid?: () => boolean } | undefined;
  /** Requests this process is working on right now (answering, or closing in the background): never touched. */
  inFlight?: ((requestId: string) => boolean) | undefined;
  /** Closes that waited for the ledger on this DATA_DIR: done first in every round. */
  pendingCloses?: PendingCloses | undefined;
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

/** The reconciler's dependencies with their defaults filled in. */
type Ctx = ReconcilerDeps & { now: () => number; giveUpAfterMs: number; submitTimeoutMs: number; lateWord: LateWord };

export function createReconciler(deps: ReconcilerDeps): Reconciler {
  const now = deps.now ?? Date.now;
  const lateWord = createLateWord({ ...deps, now });
  const ctx: Ctx = { ...deps, now, giveUpAfterMs: deps.giveUpAfterMs ?? DEFAULT_GIVE_UP_AFTER_MS, submitTimeoutMs: deps.submitTimeoutMs ?? SUBMIT_TIMEOUT_MS, lateWord };
  return {
    run: (opts = {}) => runRound(ctx, opts.olderThanMs ?? 0),
    reconcileOne: (requestId, opts = {}) => reconcileOne(ctx, requestId, opts.olderThanMs ?? 0),
  };
}

async function reconcileOne(ctx: Ctx, requestId: string, olderThanMs: number): Promise<boolean> {
  const r = await ctx.ledger.getRequest(requestId);
  if (!r || !HOLDING.includes(r.status) || !ctx.leases || ctx.inFlight?.(requestId)) return false;
  // The round's rule: a process that knows what it is working on takes any other request of its own at once.
  const scope = reconcileScope({ ownLeaseId: ctx.leases.ownLeaseId, leases: await ctx.leases.store.list(), nowMs: ctx.now(), olderThanMs, ownOlderThanMs: ctx.inFlight ? 0 : olderThanMs });
  if (!mayReconcile(r, scope)) return false;
  const report = { ...emptyReport(), examined: 1 };
  if (await adopt(ctx, r, report)) await reconcileRequest(ctx, r, report);
  if (report.settled.length + report.released.length + report.abandoned.length > 0) ctx.logger.info({ request_id: requestId, reconcile: report }, 'reconciled a request on its Idempotency-Key retry');
  return true;
}

function emptyReport(): ReconcileReport {
  return { examined: 0, settled: [], released: [], orphaned: [], running: [], unresolved: [], abandoned: [], jobsClosed: [], lostFound: [], lostAbsent: [], lateCompleted: [], adopted: [], pendingClosed: [], leasesRemoved: 0 };
}

async function runRound(ctx: Ctx, olderThanMs: number): Promise<ReconcileReport> {
  const report = emptyReport();
  if (ctx.leases?.valid && !ctx.leases.valid()) {
    ctx.logger.warn('reconcile: round skipped: this process’s lease is not known live');
    return { ...report, skipped: 'lease_expired' };
  }
  const { which, expired } = await roundScope(ctx, olderThanMs, report);
  // Before anything could take these requests for ones whose caller left: they were answered with an error.
  await closePending(ctx, report).catch((err: unknown) => ctx.logger.error({ err }, 'reconcile: pending closes could not be read'));
  try {
    await findLostSubmits(ctx, which, expired, report);
  } catch (err) {
    ctx.logger.error({ err }, 'reconcile: the search for lost submits failed');
  }
  const open = (await ctx.ledger.listOpen(which)).filter((r) => !ctx.inFlight?.(r.id));
  report.examined = open.length;
  const openIds = new Set(open.map((r) => r.id));
  for (const r of open) {
    try {
      if (await adopt(ctx, r, report)) await reconcileRequest(ctx, r, report);
    } catch (err) {
      report.unresolved.push(r.id);
      ctx.logger.error({ err, request_id: r.id }, 'reconcile: failed on a request');
    }
  }
  for (const job of await ctx.ledger.listOpenJobs(which)) {
    if ((openIds.has(job.requestId) && job.kind === 'job') || ctx.inFlight?.(job.requestId)) continue;
    try {
      // A request taken after the open requests were listed is open, not
      // closed: its jobs are someone's live work, never to be cancelled here.
      // A closed request never reopens, so one look now settles it.
      if (job.kind === 'job' && (await stillOpen(ctx, job.requestId))) continue;
      await reconcileJob(ctx, job, report);
    } catch (err) {
      ctx.logger.error({ err, job_id: job.id }, 'reconcile: failed on a job');
    }
  }
  report.lateCompleted = await ctx.lateWord.run().catch((err: unknown) => (ctx.logger.error({ err }, 'reconcile: lost jobs could not be listed'), []));
  if (ctx.leases) report.leasesRemoved = await ctx.leases.store.sweep().catch(() => 0);
  // After the requests: a dead process's slice is returned once none of its requests holds.
  if (which.scope) report.slicesReturned = await ctx.ledger.returnSlices(which.scope).catch((err: unknown) => (ctx.logger.error({ err }, 'reconcile: budget slices could not be returned'), 0));
  return report;
}

async function stillOpen(ctx: Ctx, requestId: string): Promise<boolean> {
  const r = await ctx.ledger.getRequest(requestId);
  return r !== null && HOLDING.includes(r.status);
}

/** Which rows the round may list (the lease rule), and when each expired lease ran out. */
async function roundScope(ctx: Ctx, olderThanMs: number, report: ReconcileReport): Promise<{ which: ListOpenOptions; expired: Map<string, number> }> {
  const nowMs = ctx.now();
  let scope: ReconcileScope | undefined;
  const expired = new Map<string, number>();
  if (ctx.leases) {
    const { store, ownLeaseId } = ctx.leases;
    const leases = await store.list();
    // Knowing what it is working on, the process takes every other request of its own at once.
    scope = reconcileScope({ ownLeaseId, leases, nowMs, olderThanMs, ownOlderThanMs: ctx.inFlight ? 0 : olderThanMs });
    for (const l of leases) if (l.expiresAtMs <= nowMs) expired.set(l.id, l.expiresAtMs);
    const owners = await store.ownersOfOpenRequests(scope.live.filter((id) => id !== ownLeaseId));
    report.nextLeaseExpiryMs = nextForeignExpiry(leases, owners, ownLeaseId, nowMs);
  }
  return { which: { createdBefore: new Date(nowMs - olderThanMs), scope }, expired };
}

const pastDeadline = (ctx: Ctx, job: JobRecord): boolean => ctx.now() - Date.parse(job.createdAt) > ctx.giveUpAfterMs;

async function reconcileRequest(ctx: Ctx, r: RequestWithJobs, report: ReconcileReport): Promise<void> {
  const log = ctx.logger.child({ request_id: r.id });
  // The request's own endpoint prices it: an edit's endpoint has its own price.
  const model = ctx.registry.forEndpoint(r.model, r.endpoint);
  const jobs = r.jobs.filter((j) => j.kind === 'job');
  if (jobs.length === 0) {
    await ctx.ledger.markOrphaned(r.id);
    report.orphaned.push(r.id);
    log.error({ model: r.model, key_id: r.keyId }, 'reconcile: a request with no job row; marked orphaned');
    return;
  }
  if (!model) {
    report.unresolved.push(r.id);
    log.error({ model: r.model }, 'reconcile: the request’s model is no longer in the registry; cannot price it');
    return;
  }
  const pricing = decodePricing(r.pricing, ctx.markup);
  const steps = await Promise.all(jobs.map((job) => openRequestJob(ctx, job, model, pricing)));
  const decision = decideReconciled(steps.map((s) => s.state));
  if (decision.write === 'wait') {
    (steps.some((s) => s.waiting) ? report.running : report.unresolved).push(r.id);
    return;
  }
  if (decision.write === 'close') {
    // Closed meanwhile by the process answering it (or another round): nothing to report.
    if (!(await ctx.ledger.release({ requestId: r.id, status: 'failed', errorCode: decision.errorCode })).released) return;
    (decision.errorCode === GAVE_UP ? report.abandoned : report.released).push(r.id);
    if (decision.errorCode === GAVE_UP) log.error({ model: r.model }, 'reconcile: gave up on a request fal never resolved; released without charge');
    return;
  }
  // No answer was written for this request: the images fal completed are the caller's.
  const completed = steps.flatMap((s) => (s.completed ? [s.completed] : []));
  const out = await settleCompleted(ctx.ledger, model, r.id, pricing, completed, { billingEvents: ctx.billingEvents });
  if (!out.settled) return;
  report.settled.push(r.id);
  log.info({ charge_usd: out.charge.usd, jobs: completed.length }, 'reconcile: settled a request fal completed');
}

/** One job of an open request, this round. */
async function openRequestJob(ctx: Ctx, job: JobRecord, model: ModelEntry, pricing: RequestPricing): Promise<{ state: ReconciledJob; completed?: CompletedJob; waiting?: boolean }> {
  // A submit still unanswered is being looked for in fal's listing (lost-submit-search.ts): open until that search ends.
  if (job.status === 'submitting') return { state: 'open' };
  if (job.status === 'submitted') {
    const s = await stepJob(ctx, { job, model, pricing, ctx: { pastDeadline: pastDeadline(ctx, job), imagesUnwanted: false }, requestOpen: true });
    return { ...s, waiting: s.look.seen === 'waiting' };
  }
  if (job.status === 'completed') {
    // Its images are read again to price the charge; past the deadline without them, it keeps its recorded cost and is left out of the charge.
    const seen = await lookAtFal(ctx, job);
    if (seen.completed) return { state: 'completed', completed: seen.completed };
    return { state: pastDeadline(ctx, job) ? 'ended' : 'open' };
  }
  return { state: job.status === 'lost' ? 'lost' : 'ended' };
}

/** An open job of a closed request, or a stray: its cost only; nobody will receive its images. */
async function reconcileJob(ctx: Ctx, job: JobRecord, report: ReconcileReport): Promise<void> {
  const request = await ctx.ledger.getRequest(job.requestId);
  const model = request && ctx.registry.forEndpoint(request.model, request.endpoint);
  if (!request || !model || job.falRequestId === null) return;
  const pricing = decodePricing(request.pricing, ctx.markup);
  const s = await stepJob(ctx, { job, model, pricing, ctx: { pastDeadline: pastDeadline(ctx, job), imagesUnwanted: true }, requestOpen: false });
  if (s.state !== 'open') report.jobsClosed.push(job.id);
}

/** Requests answered with an error while the ledger was down (pending-closes.ts): closed uncharged, under this process's lease once their owner's has expired. */
async function closePending(ctx: Ctx, report: ReconcileReport): Promise<void> {
  if (!ctx.pendingCloses) return;
  const own = ctx.leases?.ownLeaseId;
  for (const p of await ctx.pendingCloses.list()) {
    // This process is still retrying it.
    if (ctx.inFlight?.(p.requestId)) continue;
    const model = p.endpoint === undefined ? ctx.registry.lookup(p.model) : ctx.registry.forEndpoint(p.model, p.endpoint);
    if (!model) {
      ctx.logger.error({ request_id: p.requestId, model: p.model }, 'reconcile: a pending close names a model no longer in the registry; its file is left for an operator');
      continue;
    }
    if (own !== undefined && p.leaseId !== null && p.leaseId !== own) await ctx.ledger.adopt({ requestId: p.requestId, fromLeaseId: p.leaseId, toLeaseId: own, at: ctx.now() });
    const out = await closeUncharged(ctx.ledger, model, p.requestId, decodePricing(p.pricing, ctx.markup), p.close, p.jobs);
    // Still open under a live owner: tried again next round.
    if (!out.released && (out.request.status === 'reserved' || out.request.status === 'submitted')) continue;
    await ctx.pendingCloses.done(p.requestId);
    if (out.released) {
      report.pendingClosed.push(p.requestId);
      ctx.logger.warn({ request_id: p.requestId, error_code: p.close.errorCode }, 'reconcile: closed uncharged a request answered with an error while the ledger was down');
    }
  }
}

/** A dead owner's request becomes this process's before it is touched; false when its owner came back or another process took it first. */
async function adopt(ctx: Ctx, r: RequestWithJobs, report: ReconcileReport): Promise<boolean> {
  const own = ctx.leases?.ownLeaseId;
  if (own === undefined || r.leaseId === null || r.leaseId === own) return true;
  const taken = await ctx.ledger.adopt({ requestId: r.id, fromLeaseId: r.leaseId, toLeaseId: own, at: ctx.now() });
  if (taken) {
    report.adopted.push(r.id);
    ctx.logger.warn({ request_id: r.id, from_lease_id: r.leaseId, lease_id: own }, 'reconcile: took over a request whose owner’s lease expired');
  }
  return taken;
}
