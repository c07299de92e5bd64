/**
 * Pricing: pure functions from a model entry's price rule (data, mirroring
 * fal's price table) and the images of a job to exact amounts.
 *
 * Two sides of every charge:
 * - `upstreamEstimate`: what fal should bill us for one job (no markup).
 * - `callerCharge`: what we bill the caller, on the images actually
 *   returned, times `PRICE_MARKUP`, rounded up once to a whole micro-dollar.
 * `maxCharge` is the caller charge if every requested image comes back, for
 * the reservation made before fal is called.
 */
import { addRatio, ceilToMicros, formatDecimal, formatUsd, MoneyError, mulRatio, parseDecimal, parseMarkup, ratio, type Markup, type Ratio } from './money.js';

/** aimlapi's unit: $1 = 2,000,000 credits, so one micro-dollar is 2 credits. */
export const CREDITS_PER_MICRO = 2n;

/** Per-unit rates may be finer than a micro-dollar; the total is what gets rounded. */
const RATE_DECIMALS = 12;

/** What a price is per. The one list of price units; configuration and the registry read it here. */
export const PRICE_UNITS = ['megapixel', 'image', 'request'] as const;
export type PriceUnit = (typeof PRICE_UNITS)[number];

/** How megapixel prices round (see `imageUnits`). */
export const PRICE_ROUNDINGS = ['ceil_per_image', 'exact'] as const;
export type PriceRounding = (typeof PRICE_ROUNDINGS)[number];

interface PricingCommon {
  /** USD per unit, as an exact decimal string. */
  readonly rateUsd: string;
  /** Flat USD added to a request that had prompt expansion on. Required on models that offer it. */
  readonly promptExpansionUsd?: string;
}

export type ModelPricing =
  | (PricingCommon & {
      readonly unit: 'megapixel';
      /** Pixels in one billed megapixel; fal does not say whether it is 10^6 or 2^20. */
      readonly megapixelPixels: number;
      /** `ceil_per_image`: each image is rounded up to whole megapixels. `exact`: fractional megapixels. */
      readonly rounding: PriceRounding;
    })
  | (PricingCommon & { readonly unit: 'image' })
  | (PricingCommon & { readonly unit: 'request' });

export interface PricedModel {
  readonly pricing: ModelPricing;
}

export interface ImageDims {
  readonly width: number;
  readonly height: number;
}

export interface Charge {
  readonly micros: bigint;
  /** `micros` as a six-decimal USD string, e.g. "0.005250". */
  readonly usd: string;
  /** aimlapi credits (`meta.usage.credits_used`). */
  readonly credits: number;
}

export interface UpstreamEstimate {
  /** Billable units in the model's unit, as fal's `x-fal-billable-units` would state them. */
  readonly units: string;
  readonly micros: bigint;
}

/**
 * Throws unless `pricing` is a complete, positive price rule. Run at registry
 * construction so a model with a missing or broken price stops start-up
 * rather than being served at $0.
 */
export function validatePricing(pricing: unknown): asserts pricing is ModelPricing {
  if (typeof pricing !== 'object' || pricing === null) throw new Error('pricing is missing');
  const p = pricing as Record<string, unknown>;
  const unit = p['unit'];
  if (!PRICE_UNITS.includes(unit as PriceUnit)) {
    throw new Error(`pricing.unit must be "megapixel", "image" or "request" (got ${JSON.stringify(unit)})`);
  }
  const rate = decimalField(p, 'rateUsd');
  if (rate === undefined) throw new Error('pricing.rateUsd is missing');
  if (rate.num === 0n) throw new Error('pricing.rateUsd must be greater than 0; a free model would be billed $0 by mistake too easily');
  decimalField(p, 'promptExpansionUsd');
  if (unit === 'megapixel') {
    const px = p['megapixelPixels'];
    if (typeof px !== 'number' || !Number.isSafeInteger(px) || px <= 0) {
      throw new Error(`pricing.megapixelPixels must be a positive integer (got ${JSON.stringify(px)})`);
    }
    const rounding = p['rounding'];
    if (!PRICE_ROUNDINGS.includes(rounding as PriceRounding)) {
      throw new Error(`pricing.rounding must be "ceil_per_image" or "exact" (got ${JSON.stringify(rounding)})`);
    }
  }
}

function decimalField(p: Record<string, unknown>, key: string): Ratio | undefined {
  const v = p[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new Error(`pricing.${key} must be a decimal string such as "0.005" (got ${JSON.stringify(v)})`);
  try {
    return parseDecimal(v, RATE_DECIMALS, `pricing.${key}`);
  } catch (e) {
    if (e instanceof MoneyError) throw new Error(e.message);
    throw e;
  }
}

/**
 * Rates are a handful of fixed decimal strings, read for every request
 * (maximum charge, settlement): each is parsed once. Ratios are immutable, so
 * one parsed value serves every caller; a text that fails to parse is not
 * kept and fails again the next time.
 */
const parsedRates = new Map<string, Ratio>();
const MAX_PARSED_RATES = 1024;

function parsedRate(text: string, what: string): Ratio {
  let rate = parsedRates.get(text);
  if (rate === undefined) {
    rate = parseDecimal(text, RATE_DECIMALS, what);
    if (parsedRates.size < MAX_PARSED_RATES) parsedRates.set(text, rate);
  }
  return rate;
}

function rateOf(pricing: ModelPricing): Ratio {
  return parsedRate(pricing.rateUsd, 'pricing.rateUsd');
}

function expansionFee(pricing: ModelPricing): Ratio {
  if (pricing.promptExpansionUsd === undefined) {
    // The registry refuses such a model when its schema offers expansion; reaching this is a bug, never a free pass.
    throw new Error('prompt expansion was on but the model has no promptExpansionUsd price');
  }
  return parsedRate(pricing.promptExpansionUsd, 'pricing.promptExpansionUsd');
}

function checkDims(size: ImageDims): void {
  if (!Number.isSafeInteger(size.width) || !Number.isSafeInteger(size.height) || size.width <= 0 || size.height <= 0) {
    throw new RangeError(`image dimensions must be positive integers (got ${size.width}x${size.height})`);
  }
}

/**
 * Billable units of one image. Megapixel pricing: `ceil(w*h / megapixelPixels)`
 * with `ceil_per_image`, the exact fraction with `exact`. Per-image pricing: 1.
 * Per-request pricing has no per-image units: 0.
 */
export function imageUnits(pricing: ModelPricing, size: ImageDims): Ratio {
  checkDims(size);
  switch (pricing.unit) {
    case 'megapixel': {
      const pixels = BigInt(size.width) * BigInt(size.height);
      const per = BigInt(pricing.megapixelPixels);
      return pricing.rounding === 'ceil_per_image' ? ratio((pixels + per - 1n) / per) : ratio(pixels, per);
    }
    case 'image':
      return ratio(1n);
    case 'request':
      return ratio(0n);
  }
}

/** Units of one job that produced `images`; a per-request job is one unit whether or not images came back. */
function jobUnits(pricing: ModelPricing, images: readonly ImageDims[]): Ratio {
  if (pricing.unit === 'request') return ratio(1n);
  return images.reduce((sum, img) => addRatio(sum, imageUnits(pricing, img)), ratio(0n));
}

/** USD, before markup, of delivering `images` (plus the expansion fee when on). */
function deliveredUsd(pricing: ModelPricing, images: readonly ImageDims[], promptExpansion: boolean): Ratio {
  // Nothing delivered, nothing billed: not even a per-request price or the expansion fee.
  if (images.length === 0) return ratio(0n);
  let usd = mulRatio(jobUnits(pricing, images), rateOf(pricing));
  if (promptExpansion) usd = addRatio(usd, expansionFee(pricing));
  return usd;
}

export function creditsFromMicros(micros: bigint): number {
  const credits = micros * CREDITS_PER_MICRO;
  if (credits > BigInt(Number.MAX_SAFE_INTEGER) || credits < 0n) throw new RangeError(`credits out of range: ${credits}`);
  return Number(credits);
}

export function chargeFromMicros(micros: bigint): Charge {
  return { micros, usd: formatUsd(micros), credits: creditsFromMicros(micros) };
}

/**
 * What the caller pays for one job: Σ over the images it RETURNED of their
 * units × rate, plus the prompt-expansion fee when it was on, × `markup`,
 * rounded up once to a whole micro-dollar (so never below the configured
 * price, and never more than one micro-dollar above it).
 */
export function callerCharge(model: PricedModel, images: readonly ImageDims[], promptExpansion: boolean, markup: Markup): Charge {
  return callerChargeForJobs(model, [images], promptExpansion, markup);
}

/**
 * The same for a request that fanned out into several fal jobs: each job that
 * returned images is priced like one job (fal runs, and bills, the prompt
 * expansion once per job), summed exactly, × `markup`, rounded up once.
 */
export function callerChargeForJobs(model: PricedModel, jobs: ReadonlyArray<readonly ImageDims[]>, promptExpansion: boolean, markup: Markup): Charge {
  const usd = jobs.reduce((sum, images) => addRatio(sum, deliveredUsd(model.pricing, images, promptExpansion)), ratio(0n));
  return chargeFromMicros(ceilToMicros(mulRatio(usd, markup)));
}

/** How many images each fal job makes when a request for `numImages` is split into jobs of at most `perJob`. */
export function splitIntoJobs(numImages: number, perJob: number): number[] {
  if (!Number.isSafeInteger(numImages) || numImages < 1) throw new RangeError(`numImages must be a positive integer (got ${numImages})`);
  if (!Number.isSafeInteger(perJob) || perJob < 1) throw new RangeError(`perJob must be a positive integer (got ${perJob})`);
  const jobs: number[] = [];
  for (let left = numImages; left > 0; left -= perJob) jobs.push(Math.min(perJob, left));
  return jobs;
}

export interface ChargeableRequest {
  /** `maxImagesPerJob` decides how many jobs (each with its own expansion fee) the request becomes. */
  readonly model: PricedModel & { readonly maxImagesPerJob?: number };
  readonly numImages: number;
  readonly size: ImageDims;
  readonly promptExpansion: boolean;
}

/** Micro-dollars of the caller charge if every requested image comes back: what to reserve against the budget. */
export function maxCharge(request: ChargeableRequest, markup: Markup): bigint {
  if (!Number.isSafeInteger(request.numImages) || request.numImages < 1) throw new RangeError(`numImages must be a positive integer (got ${request.numImages})`);
  const jobs = splitIntoJobs(request.numImages, request.model.maxImagesPerJob ?? request.numImages).map((k) => Array.from({ length: k }, () => request.size));
  return callerChargeForJobs(request.model, jobs, request.promptExpansion, markup).micros;
}

/**
 * What each of the request's fal jobs would cost upstream if it completed as
 * asked: written on each job's row at reservation, the estimate recorded
 * for a job given up without fal ever reporting its cost.
 */
export function jobEstimates(request: ChargeableRequest): bigint[] {
  return splitIntoJobs(request.numImages, request.model.maxImagesPerJob ?? request.numImages).map(
    (k) => upstreamEstimate(request.model, Array.from({ length: k }, () => request.size), request.promptExpansion).micros,
  );
}

/**
 * What fal should bill us for one completed job, from the entry's mirror of
 * fal's price table; the ledger records it beside fal's own
 * `x-fal-billable-units`. `units` covers the images (or the request) only;
 * the prompt-expansion fee is in `micros`.
 */
export function upstreamEstimate(model: PricedModel, images: readonly ImageDims[], promptExpansion: boolean): UpstreamEstimate {
  const units = jobUnits(model.pricing, images);
  return { units: formatDecimal(units), micros: costOfUnits(model.pricing, units, promptExpansion) };
}

function costOfUnits(pricing: ModelPricing, units: Ratio, promptExpansion: boolean): bigint {
  let usd = mulRatio(units, rateOf(pricing));
  if (promptExpansion) usd = addRatio(usd, expansionFee(pricing));
  return ceilToMicros(usd);
}

export interface UpstreamCost {
  /** What we record as fal's bill for the job. */
  readonly micros: bigint;
  /** Where `micros` came from: fal's `x-fal-billable-units`, or our estimate when fal sent none we could read. */
  readonly source: 'fal' | 'estimate';
  /** Our estimate of the units, always computed so it can be compared. */
  readonly unitsEstimate: string;
  /** fal's units in canonical decimal form; null when absent or unreadable. */
  readonly unitsFal: string | null;
  /** fal's units differ from our estimate, or fal sent units we could not read: log and count it. */
  readonly disagrees: boolean;
}

/**
 * The upstream cost of one completed job: fal's own billable units × the
 * rate when fal reported them, otherwise our estimate. The prompt-expansion
 * fee is added on top in both cases, since fal's units count images only
 * (an assumption: fal does not document the header).
 */
export function upstreamCost(
  model: PricedModel,
  images: readonly ImageDims[],
  promptExpansion: boolean,
  falBillableUnits: string | null | undefined,
): UpstreamCost {
  const estimate = jobUnits(model.pricing, images);
  const unitsEstimate = formatDecimal(estimate);
  let fal: Ratio | undefined;
  if (falBillableUnits !== null && falBillableUnits !== undefined) {
    try {
      fal = parseDecimal(falBillableUnits.trim(), RATE_DECIMALS, 'x-fal-billable-units');
    } catch {
      fal = undefined;
    }
  }
  if (fal === undefined) {
    const unreadable = falBillableUnits !== null && falBillableUnits !== undefined;
    return { micros: costOfUnits(model.pricing, estimate, promptExpansion), source: 'estimate', unitsEstimate, unitsFal: null, disagrees: unreadable };
  }
  return {
    micros: costOfUnits(model.pricing, fal, promptExpansion),
    source: 'fal',
    unitsEstimate,
    unitsFal: formatDecimal(fal),
    disagrees: fal.num !== estimate.num || fal.den !== estimate.den,
  };
}

/**
 * What fal billed for a job that ended without images we could use: its
 * reported units × the rate. A failed job carries no prompt-expansion fee
 * (fal bills failures by units only); a job fal completed (whose output we
 * could not read) does, when the request asked for expansion.
 * fal sends `x-fal-billable-units` on a failed job's answer; when it sent
 * none (or one we cannot read) the cost is unknown and recorded as 0, with
 * `known: false` so the caller can log it.
 */
export function failedJobCost(model: PricedModel, falBillableUnits: string | null | undefined, expansionFee = false): { micros: bigint; unitsFal: string | null; known: boolean } {
  if (falBillableUnits === null || falBillableUnits === undefined) return { micros: 0n, unitsFal: null, known: false };
  let units: Ratio;
  try {
    units = parseDecimal(falBillableUnits.trim(), RATE_DECIMALS, 'x-fal-billable-units');
  } catch {
    return { micros: 0n, unitsFal: null, known: false };
  }
  return { micros: costOfUnits(model.pricing, units, expansionFee), unitsFal: formatDecimal(units), known: true };
}

/** What a request's charge depends on besides its images, kept on its ledger row so it is priced the same live and after a crash. */
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
