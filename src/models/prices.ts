/**
 * Prices from configuration, applied to the model catalog before the
 * registry is built. Two uses, one mechanism (`MODEL_PRICES`):
 *
 * - a model whose rate no public source confirms (`UnconfirmedPricing`) is
 *   served only when configuration gives it one, and is otherwise left out
 *   with a start-up log line saying why: a guessed or missing price must
 *   never be billed;
 * - any other model's published price can be replaced when fal changes it,
 *   without a release.
 *
 * An override is merged over the entry's declared rule (so `"0.01"` alone
 * keeps the declared unit and rounding) and the result goes through the
 * registry's full price validation like a declared price.
 */
import type { ModelPricing, PriceRounding, PriceUnit } from '../metering/pricing.js';
import { createModelRegistry, type ModelDefinition, type ModelEntry, type ModelRegistry, type UnconfirmedPricing } from './registry.js';

/** One model's configured price: any subset of the price rule's fields. */
export interface ModelPriceOverride {
  readonly unit?: PriceUnit;
  readonly rateUsd?: string;
  readonly megapixelPixels?: number;
  readonly rounding?: PriceRounding;
  readonly promptExpansionUsd?: string;
}

/** Keyed by model id or one of its aliases. */
export type ModelPrices = Readonly<Record<string, ModelPriceOverride>>;

export interface PricedCatalog {
  /** The models that have a price, in catalog order, ready for `createModelRegistry`. */
  readonly served: readonly ModelEntry[];
  /** Models left out for want of a price, and why. */
  readonly unserved: ReadonlyArray<{ readonly id: string; readonly endpoint: string; readonly reason: string }>;
  /** Models whose price came from configuration. */
  readonly configured: ReadonlyArray<{ readonly id: string; readonly pricing: ModelPricing }>;
}

function isUnconfirmed(p: ModelDefinition['pricing']): p is UnconfirmedPricing {
  return (p as Partial<UnconfirmedPricing>).unconfirmed !== undefined;
}

/**
 * Throws when a configured name is no model of the catalog, or names one
 * model twice: a typo must stop start-up, not leave the intended model
 * unpriced (and so unserved) without a word.
 */
export function priceCatalog(catalog: readonly ModelDefinition[], prices: ModelPrices): PricedCatalog {
  const byName = new Map<string, ModelDefinition>();
  for (const d of catalog) for (const name of [d.id, ...d.aliases]) byName.set(name, d);
  const overrides = new Map<ModelDefinition, { name: string; override: ModelPriceOverride }>();
  for (const [name, override] of Object.entries(prices)) {
    const d = byName.get(name);
    if (!d) throw new Error(`MODEL_PRICES names "${name}", which is not a model of this service (models: ${catalog.map((m) => m.id).join(', ')})`);
    const twice = overrides.get(d);
    if (twice) throw new Error(`MODEL_PRICES prices ${d.id} twice (as "${twice.name}" and "${name}")`);
    overrides.set(d, { name, override });
  }

  const served: ModelEntry[] = [];
  const unserved: Array<{ id: string; endpoint: string; reason: string }> = [];
  const configured: Array<{ id: string; pricing: ModelPricing }> = [];
  for (const d of catalog) {
    const o = overrides.get(d)?.override;
    if (!o) {
      if (isUnconfirmed(d.pricing)) unserved.push({ id: d.id, endpoint: d.endpoint, reason: d.pricing.unconfirmed });
      else served.push({ ...d, pricing: d.pricing });
      continue;
    }
    const { unconfirmed: _, ...declared } = d.pricing as unknown as Record<string, unknown>;
    const merged = { ...declared, ...o } as unknown as ModelPricing;
    if (merged.rateUsd === null || merged.rateUsd === undefined) {
      // Configured, but without the one thing that was missing.
      throw new Error(`MODEL_PRICES for ${d.id} has no rateUsd, and the model has no confirmed rate of its own`);
    }
    served.push({ ...d, pricing: merged });
    configured.push({ id: d.id, pricing: merged });
  }
  return { served, unserved, configured };
}

export interface ServedRegistryOptions {
  readonly catalog: readonly ModelDefinition[];
  readonly prices: ModelPrices;
  /** Where the start-up lines go (a pino logger fits). */
  readonly log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

/** The registry of the models this configuration can serve, logging the ones it leaves out. */
export function createServedModelRegistry(opts: ServedRegistryOptions): ModelRegistry {
  const priced = priceCatalog(opts.catalog, opts.prices);
  for (const m of priced.unserved) {
    opts.log?.warn(
      { model: m.id, endpoint: m.endpoint },
      `model ${m.id} is not served: ${m.reason}. To serve it, set MODEL_PRICES='{"${m.id}":"<USD per unit>"}'`,
    );
  }
  for (const m of priced.configured) opts.log?.info({ model: m.id, pricing: m.pricing }, `model ${m.id} is priced from MODEL_PRICES`);
  return createModelRegistry(priced.served);
}
