import type { Logger } from 'pino';
import { FalCallError, type FalGateway, type FalResult } from '../fal/gateway.js';
import type { RunningClaim } from '../metering/idempotency-store.js';
import type { LeaseStore } from '../metering/lease-store.js';
import { HOLDING } from '../metering/ledger-statements.js';
import type { Ledger, RequestWithJobs } from '../metering/ledger.js';
import { formatUsd } from '../metering/money.js';
import type { Charge } from '../metering/pricing.js';
import type { Reconciler } from '../metering/reconcile.js';
import type { RequestStatus } from '../db/schema.js';
import type { GenerateOutcome } from './generate.js';
import type { Media } from './media.js';
import type { CanonicalRequest } from './normalize.js';
import { imagesResponse } from './response.js';

/**
 * What a retry with an `Idempotency-Key` gets when the request that claimed
 * the key stored no answer and no live process will: the process died, or
 * the caller left before an answer was written. The request's ledger row
 * decides, under the billing rule (docs/BILLING.md: charged for images that
 * were delivered, or that completed after the caller left):
 *
 * - the claim's process is live and will answer: `in_progress`;
 * - no ledger row, and the claim's lease is dead: nothing was reserved or
 *   sent to fal, so the retry takes the key over and does the work
 *   (`not_started`); a claim without a lease cannot be judged and is left
 *   `in_progress`;
 * - the row still holds its reservation: reconciled at once when its
 *   owner's lease is dead (reconcile.ts `reconcileOne`); while fal still
 *   works on a job, or the owner is live, `in_progress`;
 * - settled: the caller paid for the images fal completed, so they are the
 *   answer, rebuilt from fal's results (`charged`). If fal cannot give them
 *   now, `charged_unreadable` (final when fal no longer has the job): an
 *   error that says the request was charged, never one inviting a paid retry;
 * - released, failed or orphaned: it ended without images and nobody was
 *   charged (`closed`).
 *
 * Like reconciliation, this trusts leases: a process whose lease lapsed
 * while it still ran may find its claim taken over.
 */

export type Recovered =
  | { state: 'in_progress' }
  | { state: 'not_started' }
  | { state: 'charged'; outcome: GenerateOutcome }
  | { state: 'charged_unreadable'; charge: Charge; final: boolean }
  | { state: 'closed'; status: RequestStatus; errorCode: string | null };

export interface AnswerRecoveryDeps {
  ledger: Ledger;
  leases: LeaseStore;
  reconciler: Pick<Reconciler, 'reconcileOne'>;
  fal: FalGateway;
  media: Media;
  /** RECONCILE_AFTER_MS: when the process's own leftovers may be reconciled (leases.ts). */
  reconcileAfterMs: number;
  logger: Logger;
  now?: () => number;
}

export interface AnswerRecovery {
  recover(claim: RunningClaim, req: CanonicalRequest, publicBaseUrl: string): Promise<Recovered>;
}

/** Retries polling one request share a reconciliation for this long, rather than each asking fal. */
const RECONCILE_EVERY_MS = 1_000;
const RESULT_TIMEOUT_MS = 60_000;
const IN_PROGRESS: Recovered = { state: 'in_progress' };

export function createAnswerRecovery(deps: AnswerRecoveryDeps): AnswerRecovery {
  const now = deps.now ?? Date.now;
  const recent = new Map<string, Promise<boolean>>();

  function reconcileSoon(requestId: string): Promise<boolean> {
    let run = recent.get(requestId);
    if (!run) {
      run = deps.reconciler.reconcileOne(requestId, { olderThanMs: deps.reconcileAfterMs }).catch((err: unknown) => {
        deps.logger.warn({ err, request_id: requestId }, 'idempotency: reconciling the request of a retry failed; tried again on its next poll');
        return false;
      });
      recent.set(requestId, run);
      void run.finally(() => setTimeout(() => recent.delete(requestId), RECONCILE_EVERY_MS).unref());
    }
    return run;
  }

  async function rebuild(r: RequestWithJobs, req: CanonicalRequest, publicBaseUrl: string): Promise<Recovered> {
    const charge: Charge = { micros: r.chargeMicros, usd: formatUsd(r.chargeMicros), credits: Number(r.credits) };
    const jobs = r.jobs.filter((j) => j.kind === 'job' && j.status === 'completed' && j.falRequestId !== null).sort((a, b) => jobIndex(a.id) - jobIndex(b.id));
    const log = deps.logger.child({ request_id: r.id });
    if (jobs.length === 0) {
      log.error('idempotency: a settled request has no completed job to answer with');
      return { state: 'charged_unreadable', charge, final: true };
    }
    let results: FalResult[];
    try {
      results = await Promise.all(jobs.map((j) => deps.fal.result(j.endpoint, j.falRequestId!, { signal: AbortSignal.timeout(RESULT_TIMEOUT_MS) })));
      const seed = req.falInput['seed'];
      const body = await imagesResponse({ req, results, charge, baseSeed: typeof seed === 'number' ? seed : undefined, nowMs: Date.parse(r.settledAt ?? r.createdAt), publicBaseUrl, tenant: r.keyId, requestId: r.id }, deps.media);
      return { state: 'charged', outcome: { body, charge, falRequestIds: results.map((x) => x.falRequestId) } };
    } catch (err) {
      // fal no longer knows the job: its images are gone for good. Anything else may pass.
      const gone = err instanceof FalCallError && err.kind === 'http' && (err.status === 404 || err.status === 410);
      log.warn({ err: (err as Error).message, gone }, 'idempotency: the images of a settled request could not be fetched again');
      return { state: 'charged_unreadable', charge, final: gone };
    }
  }

  return {
    async recover(claim, req, publicBaseUrl) {
      if (claim.leaseId !== null) {
        const nowMs = now();
        const live = (await deps.leases.list()).some((l) => l.id === claim.leaseId && l.expiresAtMs > nowMs);
        if (live) return IN_PROGRESS;
      }
      let r = await deps.ledger.getRequest(claim.requestId);
      if (!r) return claim.leaseId === null ? IN_PROGRESS : { state: 'not_started' };
      if (HOLDING.includes(r.status)) {
        if (!(await reconcileSoon(r.id))) return IN_PROGRESS;
        r = await deps.ledger.getRequest(r.id);
        if (!r || HOLDING.includes(r.status)) return IN_PROGRESS;
      }
      if (r.status === 'settled') return rebuild(r, req, publicBaseUrl);
      return { state: 'closed', status: r.status, errorCode: r.errorCode };
    },
  };
}

/** The index in our job id `<request id>/<index>` (ledger-jobs.ts `jobIdFor`). */
function jobIndex(jobId: string): number {
  return Number(jobId.slice(jobId.lastIndexOf('/') + 1));
}
