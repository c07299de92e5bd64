import type { Ledger } from './ledger.js';
import { callerCharge, upstreamCost, type Charge, type PricedModel } from './pricing.js';
import { formatDecimal, parseMarkup, type Markup } from './money.js';

/**
 * Turning finished fal jobs into ledger rows, shared by the live request path
 * and by reconciliation so a request settled after a crash is priced exactly
 * as it would have been live.
 */

export interface RequestPricing {
  promptExpansion: boolean;
  markup: Markup;
}

export function encodePricing(p: RequestPricing): string {
  return JSON.stringify({ prompt_expansion: p.promptExpansion, markup: formatDecimal(p.markup) });
}

export function decodePricing(json: string | null, fallbackMarkup: Markup): RequestPricing {
  if (!json) return { promptExpansion: false, markup: fallbackMarkup };
  const raw = JSON.parse(json) as { prompt_expansion?: unknown; markup?: unknown };
  return {
    promptExpansion: raw.prompt_expansion === true,
    markup: typeof raw.markup === 'string' ? parseMarkup(raw.markup) : fallbackMarkup,
  };
}

export interface CompletedJob {
  falRequestId: string;
  images: ReadonlyArray<{ width: number; height: number }>;
  /** fal's `x-fal-billable-units`, when sent. */
  billableUnits: string | null;
}

export interface SettlementOutcome {
  charge: Charge;
  upstreamCostMicros: bigint;
  /** fal ids whose billed quantity differs from our estimate. */
  disagreements: Array<{ falRequestId: string; unitsEstimate: string; unitsFal: string | null }>;
}

/**
 * Records every completed job and settles the request on the images they
 * returned. The prompt-expansion fee is per request, so it is charged once
 * even when a request fans out into several jobs.
 */
export async function settleCompleted(
  ledger: Ledger,
  model: PricedModel,
  requestId: string,
  pricing: RequestPricing,
  jobs: readonly CompletedJob[],
): Promise<SettlementOutcome> {
  let upstreamMicros = 0n;
  const disagreements: SettlementOutcome['disagreements'] = [];
  const allImages: Array<{ width: number; height: number }> = [];
  for (const [i, job] of jobs.entries()) {
    const expansionHere = pricing.promptExpansion && i === 0;
    const cost = upstreamCost(model, job.images, expansionHere, job.billableUnits);
    upstreamMicros += cost.micros;
    allImages.push(...job.images);
    const done = await ledger.completeJob({
      falRequestId: job.falRequestId,
      images: job.images.length,
      pixels: job.images.reduce((s, im) => s + im.width * im.height, 0),
      unitsEstimate: cost.unitsEstimate,
      unitsFal: job.billableUnits,
      upstreamCostMicros: cost.micros,
    });
    if (done.unitsMismatch) disagreements.push({ falRequestId: job.falRequestId, unitsEstimate: cost.unitsEstimate, unitsFal: job.billableUnits });
  }
  const charge = callerCharge(model, allImages, pricing.promptExpansion, pricing.markup);
  await ledger.settle({
    requestId,
    chargeMicros: charge.micros,
    credits: charge.credits,
    upstreamCostMicros: upstreamMicros,
    images: allImages.length,
  });
  return { charge, upstreamCostMicros: upstreamMicros, disagreements };
}
