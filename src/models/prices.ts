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
import { createModelRegistry, type EditEndpoint, type EditKind, type ModelDefinition, type ModelEdits, type ModelEntry, type ModelRegistry, type UnconfirmedPricing } from './registry.js';

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
  // A model is priced by its id or an alias; an edit endpoint by its fal endpoint id.
  const byName = new Map<string, PriceTarget>();
  for (const d of catalog) {
    for (const name of [d.id, ...d.aliases]) byName.set(name, { d });
    for (const e of editEndpoints(d)) byName.set(e.target.endpoint, { d, edit: e.kind });
  }
  const overrides = new Map<string, { name: string; override: ModelPriceOverride }>();
  for (const [name, override] of Object.entries(prices)) {
    const t = byName.get(name);
    if (!t) throw new Error(`MODEL_PRICES names "${name}", which is not a model of this service (models: ${catalog.map((m) => m.id).join(', ')})`);
    const key = targetKey(t);
    const twice = overrides.get(key);
    if (twice) throw new Error(`MODEL_PRICES prices ${t.d.id}${t.edit ? ` (${t.edit})` : ''} twice (as "${twice.name}" and "${name}")`);
    overrides.set(key, { name, override });
  }

  const served: ModelEntry[] = [];
  const unserved: Array<{ id: string; endpoint: string; reason: string }> = [];
  const configured: Array<{ id: string; pricing: ModelPricing }> = [];
  for (const d of catalog) {
    const priced = priceOf(d.id, d.pricing, overrides.get(targetKey({ d }))?.override, configured);
    if (!priced) {
      unserved.push({ id: d.id, endpoint: d.endpoint, reason: (d.pricing as UnconfirmedPricing).unconfirmed });
      continue;
    }
    const { edits: _, ...rest } = d;
    const edits = pricedEdits(d, overrides, unserved, configured);
    served.push(edits ? { ...rest, pricing: priced, edits } : { ...rest, pricing: priced });
  }
  return { served, unserved, configured };
}

interface PriceTarget {
  d: ModelDefinition;
  edit?: EditKind;
}

function targetKey(t: PriceTarget): string {
  return `${t.d.id}\0${t.edit ?? ''}`;
}

function editEndpoints(d: ModelDefinition): Array<{ kind: EditKind; target: EditEndpoint<ModelPricing | UnconfirmedPricing> }> {
  const out: Array<{ kind: EditKind; target: EditEndpoint<ModelPricing | UnconfirmedPricing> }> = [];
  if (d.edits) out.push({ kind: 'image_to_image', target: d.edits.imageToImage });
  if (d.edits?.inpaint) out.push({ kind: 'inpaint', target: d.edits.inpaint });
  return out;
}

/** The declared rule with the configured one merged over it; undefined when neither gives a rate. */
function priceOf(id: string, declared: ModelPricing | UnconfirmedPricing, o: ModelPriceOverride | undefined, configured: Array<{ id: string; pricing: ModelPricing }>): ModelPricing | undefined {
  if (!o) return isUnconfirmed(declared) ? undefined : declared;
  const { unconfirmed: _, ...rule } = declared as unknown as Record<string, unknown>;
  const merged = { ...rule, ...o } as unknown as ModelPricing;
  // Configured, but without the one thing that was missing.
  if (merged.rateUsd === null || merged.rateUsd === undefined) throw new Error(`MODEL_PRICES for ${id} has no rateUsd, and it has no confirmed rate of its own`);
  configured.push({ id, pricing: merged });
  return merged;
}

/** The model's edit endpoints that have a price; an unpriced one is left out (and logged), never billed at $0. */
function pricedEdits(d: ModelDefinition, overrides: Map<string, { override: ModelPriceOverride }>, unserved: Array<{ id: string; endpoint: string; reason: string }>, configured: Array<{ id: string; pricing: ModelPricing }>): ModelEdits | undefined {
  if (!d.edits) return undefined;
  const priced: Partial<Record<EditKind, EditEndpoint>> = {};
  for (const { kind, target } of editEndpoints(d)) {
    const pricing = priceOf(`${d.id} (${kind})`, target.pricing, overrides.get(targetKey({ d, edit: kind }))?.override, configured);
    if (pricing) priced[kind] = { ...target, pricing };
    else unserved.push({ id: `${d.id} (${kind})`, endpoint: target.endpoint, reason: (target.pricing as UnconfirmedPricing).unconfirmed });
  }
  if (!priced.image_to_image) return undefined;
  const { inpaint: _, ...edits } = d.edits;
  return priced.inpaint ? { ...edits, imageToImage: priced.image_to_image, inpaint: priced.inpaint } : { ...edits, imageToImage: priced.image_to_image };
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
      `model ${m.id} is not served: ${m.reason}. To serve it, set MODEL_PRICES='{"${m.id.includes(' ') ? m.endpoint : m.id}":"<USD per unit>"}'`,
    );
  }
  for (const m of priced.configured) opts.log?.info({ model: m.id, pricing: m.pricing }, `model ${m.id} is priced from MODEL_PRICES`);
  return createModelRegistry(priced.served);
}
