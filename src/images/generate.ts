import type { Logger } from 'pino';
import { ApiError, insufficientQuota, serviceUnavailable, upstreamError } from '../errors.js';
import { FalCallError, jobFailed, type FalGateway, type FalResult } from '../fal/gateway.js';
import type { CanonicalRequest } from './normalize.js';
import type { Media } from './media.js';
import { MediaError } from './media.js';
import { mapFalError } from './upstream-errors.js';
import { maxCharge } from '../metering/pricing.js';
import { encodePricing, settleCompleted, type BillingEvents } from '../metering/settlement.js';
import { formatUsd, type Markup } from '../metering/money.js';
import type { Ledger } from '../metering/ledger.js';
import type { Metrics } from '../metrics.js';
import type { ImagesResponse } from '../schemas/images-response.js';

/**
 * The use case: one caller request → one fal job → one OpenAI-shaped
 * response, metered. It knows nothing of HTTP: the route hands it a canonical
 * request and a signal that fires when the caller goes away.
 *
 * Billing follows the images, not the request: the caller is charged for the
 * images fal returned, whenever fal completed the job, even if the caller has
 * left; a job that failed or was cancelled before completing is not charged.
 */

export interface GenerateContext {
  requestId: string;
  keyId: string;
  /** Fires when the caller disconnects. */
  callerSignal: AbortSignal;
  /** Origin the caller used, for URLs of images we proxy. */
  publicBaseUrl: string;
  idempotencyKey?: string;
  /** Called once a fal job exists or may exist (submit answered, or its outcome is unknown). */
  onSubmitted?: () => void;
}

export type ImagesResponseBody = ImagesResponse;
type ImageItem = ImagesResponse['data'][number];

export interface GenerateOutcome {
  body: ImagesResponseBody;
  headers: Record<string, string>;
  falRequestId: string;
}

export interface ImageServiceDeps {
  fal: FalGateway;
  ledger: Ledger;
  media: Media;
  markup: Markup;
  requestTimeoutMs: number;
  logger: Logger;
  now?: () => number;
  metrics?: Metrics;
  /** Fires on shutdown after the grace period: abandon waits, cancel jobs. */
  shutdownSignal?: AbortSignal;
  /** Set when the billing webhook is on: settlements then write an event for it. */
  billingEvents?: BillingEvents | undefined;
}

export interface ImageService {
  generate(req: CanonicalRequest, ctx: GenerateContext): Promise<GenerateOutcome>;
}

/** fal fields whose name differs from what an OpenAI caller may have sent. */
const OPENAI_ALIASES: Record<string, string> = { num_images: 'n', image_size: 'size' };

export function createImageService(deps: ImageServiceDeps): ImageService {
  const now = deps.now ?? Date.now;

  async function ledgerCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      deps.logger.error({ err, what }, 'ledger write failed');
      // Fail closed: never serve what cannot be metered.
      throw serviceUnavailable('Usage metering is unavailable; the request was not processed.', 5, 'metering_unavailable');
    }
  }

  return {
    async generate(req, ctx) {
      deps.metrics?.jobsInFlight.inc();
      try {
        return await generateOne(req, ctx);
      } finally {
        deps.metrics?.jobsInFlight.dec();
      }
    },
  };

  async function generateOne(req: CanonicalRequest, ctx: GenerateContext): Promise<GenerateOutcome> {
    const log = deps.logger.child({ request_id: ctx.requestId, model: req.model.id });
    const reserve = maxCharge(req, deps.markup);
    const pricing = { promptExpansion: req.promptExpansion, markup: deps.markup };
    const reserved = await ledgerCall('reserve', () =>
      deps.ledger.reserve({
        requestId: ctx.requestId,
        keyId: ctx.keyId,
        model: req.model.id,
        endpoint: req.model.endpoint,
        user: req.user ?? null,
        maxChargeMicros: reserve,
        pricing: encodePricing(pricing),
        idempotencyKey: ctx.idempotencyKey ?? null,
      }),
    );
    if (!reserved.ok && reserved.reason === 'request_id_taken') {
      // The id keys the usage row and the billing event a receiver de-duplicates on: two requests can never share it.
      throw new ApiError(409, `The x-request-id ${JSON.stringify(ctx.requestId)} was already used for another request; send a new one, or none.`, {
        type: 'conflict_error',
        code: 'request_id_reused',
        param: 'x-request-id',
      });
    }
    if (!reserved.ok) {
      deps.metrics?.refusals.inc({ reason: 'budget' });
      throw insufficientQuota(
        `This request may cost up to $${formatUsd(reserve)}, which would exceed the key's budget ($${formatUsd(reserved.budgetMicros ?? 0n)} total, $${formatUsd(reserved.spentMicros)} spent, $${formatUsd(reserved.reservedMicros)} reserved by requests in flight).`,
      );
    }

    const deadline = AbortSignal.timeout(deps.requestTimeoutMs);
    const signals = [ctx.callerSignal, deadline, ...(deps.shutdownSignal ? [deps.shutdownSignal] : [])];
    const signal = AbortSignal.any(signals);
    const abortReason = (): 'deadline' | 'client_gone' | 'shutdown' | undefined =>
      ctx.callerSignal.aborted ? 'client_gone' : deadline.aborted ? 'deadline' : deps.shutdownSignal?.aborted ? 'shutdown' : undefined;
    const fieldOrigins = Object.fromEntries(
      Object.keys(req.falInput).map((f) => [f, OPENAI_ALIASES[f] && req.sentFields.has(OPENAI_ALIASES[f]!) ? OPENAI_ALIASES[f]! : f]),
    );

    const input = { ...req.falInput, sync_mode: req.responseFormat === 'b64_json' };
    let falRequestId: string;
    try {
      ({ falRequestId } = await deps.fal.submit(req.model.endpoint, input, { signal }));
      ctx.onSubmitted?.();
    } catch (err) {
      const fe = asFalError(err);
      if (fe.ambiguous) {
        ctx.onSubmitted?.();
        // fal may have created a job we never learnt the id of: keep the
        // reservation visible as an orphan instead of quietly releasing it.
        await ledgerCall('orphan', () => deps.ledger.markOrphaned(ctx.requestId));
        log.error({ err: fe.message, phase: fe.phase, status: fe.status }, 'submit outcome unknown; request marked orphaned');
      } else {
        await ledgerCall('release', () => deps.ledger.release({ requestId: ctx.requestId, status: 'failed', errorCode: `submit_${fe.status ?? fe.kind}` }));
      }
      throw mapFalError(fe, { submitted: false, fieldOrigins, abortReason: abortReason() });
    }
    await ledgerCall('submit', () => deps.ledger.recordSubmit({ requestId: ctx.requestId, falRequestId, endpoint: req.model.endpoint }));
    log.debug({ fal_request_id: falRequestId }, 'fal job submitted');
    const submittedAt = performance.now();

    let result: FalResult;
    try {
      await deps.fal.waitForCompletion(req.model.endpoint, falRequestId, { signal });
      result = await deps.fal.result(req.model.endpoint, falRequestId, { signal });
    } catch (err) {
      const fe = asFalError(err);
      const after = fe.kind === 'aborted' ? await cancelOrCollect(req, falRequestId, log) : null;
      if (after?.result) {
        result = after.result;
      } else {
        if (jobFailed(fe)) {
          // The job ran and failed on its input: fal bills nothing for it.
          await ledgerCall('fail', () => deps.ledger.failJob({ falRequestId, status: 'failed' }));
          await ledgerCall('release', () => deps.ledger.release({ requestId: ctx.requestId, status: 'failed', errorCode: `job_failed_${fe.status}` }));
        } else if (after?.cancelled) {
          await ledgerCall('cancel', () => deps.ledger.failJob({ falRequestId, status: 'cancelled' }));
          await ledgerCall('release', () => deps.ledger.release({ requestId: ctx.requestId, status: 'released', errorCode: abortReason() ?? 'aborted' }));
        }
        // Anything else (cancel refused, fal unreachable) leaves the request
        // open: reconciliation asks fal what became of the job and settles
        // or releases it, so a job fal finishes anyway is still billed.
        throw mapFalError(fe, { submitted: true, fieldOrigins, abortReason: abortReason() });
      }
    }

    const output = result.output;
    const images = output.images.map((i) => ({ width: i.width, height: i.height }));
    const settled = await ledgerCall('settle', () =>
      settleCompleted(deps.ledger, req.model, ctx.requestId, pricing, [{ falRequestId, images, billableUnits: result.billableUnits }], {
        billingEvents: deps.billingEvents,
      }),
    );
    for (const d of settled.disagreements) {
      log.warn({ fal_request_id: d.falRequestId, units_estimate: d.unitsEstimate, units_fal: d.unitsFal }, 'fal billed a different quantity than our estimate');
      deps.metrics?.unitsDisagreements.inc({ model: req.model.id });
    }
    const charge = settled.charge;
    const m = deps.metrics;
    if (m) {
      m.falJobDuration.observe({ model: req.model.id, outcome: 'completed' }, (performance.now() - submittedAt) / 1000);
      m.imagesDelivered.inc({ model: req.model.id }, images.length);
      m.callerChargeUsd.inc({ model: req.model.id }, Number(charge.usd));
      m.upstreamCostUsd.inc({ model: req.model.id }, Number(formatUsd(settled.upstreamCostMicros)));
    }

    let data: ImageItem[];
    try {
      data = req.responseFormat === 'b64_json'
        ? await Promise.all(output.images.map(async (i) => ({ b64_json: await deps.media.toBase64(i.url) })))
        : output.images.map((i) => ({ url: deps.media.toClientUrl(i.url, ctx.publicBaseUrl) }));
    } catch (err) {
      if (!(err instanceof MediaError)) throw err;
      log.error({ err: err.message }, 'could not deliver images');
      throw upstreamError('The generated images could not be retrieved from the provider.', { code: 'upstream_media_error', shouldRetry: false });
    }

    const nsfw = Array.isArray(output.has_nsfw_concepts) ? output.has_nsfw_concepts : [];
    const body: ImagesResponseBody = {
      created: Math.floor(now() / 1000),
      data,
      output_format: req.outputFormat,
      size: `${req.size.width}x${req.size.height}`,
      meta: {
        usage: { credits_used: charge.credits, tokens_used: charge.credits, cost_usd: charge.usd },
        seed: typeof output.seed === 'number' ? output.seed : null,
        images: output.images.map((i, k) => ({
          width: i.width,
          height: i.height,
          content_type: i.content_type,
          has_nsfw_concept: nsfw[k] === true,
        })),
        fal_request_id: result.falRequestId,
      },
    };
    return {
      body,
      falRequestId: result.falRequestId,
      headers: { 'x-usage-cost-usd': charge.usd, 'x-usage-credits': String(charge.credits), 'x-fal-request-id': result.falRequestId },
    };
  }

  /**
   * Our wait was cut short. Cancel the job; if fal says it already completed,
   * it will bill us, so fetch the result and bill (and, if the caller is still
   * there, deliver) it rather than lose it.
   */
  async function cancelOrCollect(req: CanonicalRequest, falRequestId: string, log: Logger): Promise<{ result?: FalResult; cancelled: boolean }> {
    const endpoint = req.model.endpoint;
    const outcome = await deps.fal.cancel(endpoint, falRequestId, { signal: AbortSignal.timeout(10_000) });
    log.info({ fal_request_id: falRequestId, outcome }, 'fal job cancel');
    if (outcome !== 'already_completed' && outcome !== 'cancellation_requested') return { cancelled: false };
    // A 202 is only a request: the job may still finish (and be billed).
    // Confirm briefly; whatever stays unknown is left to reconciliation.
    const confirmBy = Date.now() + CANCEL_CONFIRM_MS;
    try {
      while ((await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(5_000) })).status !== 'COMPLETED') {
        if (Date.now() > confirmBy) return { cancelled: false };
        await new Promise((r) => setTimeout(r, 100));
      }
      return { result: await deps.fal.result(endpoint, falRequestId, { signal: AbortSignal.timeout(30_000) }), cancelled: false };
    } catch (err) {
      if (err instanceof FalCallError && jobFailed(err)) return { cancelled: true };
      log.warn({ err: (err as Error).message, fal_request_id: falRequestId }, 'job state unknown after cancel; left for reconciliation');
      return { cancelled: false };
    }
  }
}

/** How long we wait for fal to confirm a cancel before leaving it to reconciliation. */
const CANCEL_CONFIRM_MS = 2_000;

function asFalError(err: unknown): FalCallError {
  if (err instanceof FalCallError) return err;
  if (err instanceof ApiError) throw err;
  return new FalCallError(`unexpected: ${(err as Error)?.message}`, { phase: 'other', kind: 'bad_response', cause: err });
}
