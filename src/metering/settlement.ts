import type { Ledger, ReleaseResult, RequestRecord } from './ledger.js';
import { callerChargeForJobs, upstreamCost, type Charge, type PricedModel, type RequestPricing } from './pricing.js';
import { formatUsd } from './money.js';
import type { UsageSettledData } from '../schemas/usage-settled-event.js';

/**
 * Turning finished fal jobs into ledger rows, shared by the live request path
 * and by reconciliation so a request settled after a crash is priced exactly
 * as it would have been live.
 */

export { decodePricing, encodePricing, type RequestPricing } from './pricing.js';

export interface CompletedJob {
  /** Our job id (the ledger's key). */
  jobId: string;
  /** The id submit answered. */
  falRequestId: string;
  /** Another id fal reported for it (a runner retry). */
  otherFalId?: string | undefined;
  images: ReadonlyArray<{ width: number; height: number }>;
  /** fal's `x-fal-billable-units`, when sent. */
  billableUnits: string | null;
}

export interface SettlementOutcome {
  /** False when the request was already closed, or belongs to another process now: this call changed nothing. */
  settled: boolean;
  /** The request's row after the call. */
  request: RequestRecord;
  charge: Charge;
  upstreamCostMicros: bigint;
  /** fal ids whose billed quantity differs from our estimate. */
  disagreements: Array<{ falRequestId: string; unitsEstimate: string; unitsFal: string | null }>;
}

/** Where settlements announce themselves when the billing webhook is on (the delivery worker). */
export interface BillingEvents {
  /** A new event was committed: deliver soon rather than at the next poll. */
  kick(): void;
}

export interface SettleOptions {
  /** When set, every settlement also writes a `usage.settled` event to the outbox, in the same transaction. */
  billingEvents?: BillingEvents | undefined;
}

export const USAGE_SETTLED = 'usage.settled';

/**
 * The event id of a request's settlement: the same on every attempt and in
 * every process, so a receiver can de-duplicate on it. It is built from our
 * request id, unique across keys (never the caller's `x-request-id`, which
 * is unique only within its key); a row reserved before migration 0005 may
 * still carry a caller's id, which allows `.`. Standard Webhooks
 * signs `<id>.<timestamp>.<body>`, so a dot in the id would let one signed
 * string be split two ways. `~` never occurs in a request id, which keeps the
 * mapping one-to-one.
 */
export function billingEventId(requestId: string): string {
  return `evt_${requestId.replaceAll('.', '~')}`;
}

/** The `data` of a `usage.settled` event (see src/schemas/usage-settled-event.ts). */
export function usageSettledData(request: RequestRecord, falRequestIds: readonly string[]): UsageSettledData {
  return {
    request_id: request.id,
    client_request_id: request.clientRequestId,
    key_id: request.keyId,
    model: request.model,
    user: request.user,
    images: request.images,
    fal_request_ids: [...falRequestIds],
    charge_usd: formatUsd(request.chargeMicros),
    credits: Number(request.credits),
    created_at: request.createdAt,
    settled_at: request.settledAt ?? '',
  };
}

/** Each completed job's ledger row, priced: what fal billed for it. */
export function completions(model: PricedModel, pricing: RequestPricing, jobs: readonly CompletedJob[]) {
  return jobs.map((job) => {
    const cost = upstreamCost(model, job.images, pricing.promptExpansion, job.billableUnits);
    return {
      jobId: job.jobId,
      otherFalId: job.otherFalId ?? null,
      falRequestId: job.falRequestId,
      images: job.images.length,
      pixels: job.images.reduce((s, im) => s + im.width * im.height, 0),
      unitsEstimate: cost.unitsEstimate,
      unitsFal: job.billableUnits,
      upstreamCostMicros: cost.micros,
    };
  });
}

/**
 * Closes a request uncharged (it was answered with an error, or nothing
 * completed): its hold goes back, and the jobs that did complete are recorded
 * at what fal billed for them, as upstream cost nobody is charged for.
 */
export async function closeUncharged(
  ledger: Ledger,
  model: PricedModel,
  requestId: string,
  pricing: RequestPricing,
  close: { status: 'released' | 'failed'; errorCode: string },
  jobs: readonly CompletedJob[],
): Promise<ReleaseResult> {
  return ledger.release({ requestId, status: close.status, errorCode: close.errorCode, jobs: completions(model, pricing, jobs) });
}

/**
 * Records every completed job and settles the request on the images they
 * returned. A request that fanned out into several jobs pays the
 * prompt-expansion fee once per job, as fal bills it.
 */
export async function settleCompleted(
  ledger: Ledger,
  model: PricedModel,
  requestId: string,
  pricing: RequestPricing,
  jobs: readonly CompletedJob[],
  options: SettleOptions = {},
): Promise<SettlementOutcome> {
  const rows = completions(model, pricing, jobs);
  const upstreamMicros = rows.reduce((sum, r) => sum + r.upstreamCostMicros, 0n);
  const allImages = jobs.flatMap((j) => j.images);
  const charge = callerChargeForJobs(model, jobs.map((j) => j.images), pricing.promptExpansion, pricing.markup);
  const events = options.billingEvents;
  const falRequestIds = jobs.map((j) => j.falRequestId);
  // The jobs' rows and the charge in one transaction: a crash leaves either
  // all of it or none (reconciliation then redoes it from fal's answers).
  const result = await ledger.settleJobs({
    jobs: rows,
    settle: {
      requestId,
      chargeMicros: charge.micros,
      credits: charge.credits,
      images: allImages.length,
      outboxEvent: events && {
        eventId: billingEventId(requestId),
        type: USAGE_SETTLED,
        payload: (request: RequestRecord) => usageSettledData(request, falRequestIds),
      },
    },
  });
  const disagreements = result.jobs.flatMap((done, i) =>
    done.unitsMismatch ? [{ falRequestId: rows[i]!.falRequestId, unitsEstimate: rows[i]!.unitsEstimate, unitsFal: rows[i]!.unitsFal }] : [],
  );
  if (result.settlement.settled) events?.kick();
  return { settled: result.settlement.settled, request: result.settlement.request, charge, upstreamCostMicros: upstreamMicros, disagreements };
}
