import type { ModelDefinition, ModelEntry } from './registry.js';
import { priceCatalog } from './prices.js';
import { flux2Lora, fluxDev, fluxSchnell } from './flux.js';
import { zImageBase, zImageBaseLora, zImageTurboDefinition, zImageTurboLoraDefinition } from './z-image.js';

/**
 * Every model this service knows. Adding a model is one entry here (declared
 * next to its family, like ./z-image.ts or ./flux.ts) plus, when it takes
 * fields no schema has yet, one schema in src/schemas/image-request.ts.
 * An entry whose price is not confirmed is served only once MODEL_PRICES
 * gives it one (./prices.ts).
 */
export const modelCatalog: readonly ModelDefinition[] = [
  zImageTurboDefinition,
  zImageTurboLoraDefinition,
  zImageBase,
  zImageBaseLora,
  fluxSchnell,
  fluxDev,
  flux2Lora,
];

/** The models served with no price configuration at all: the catalog's entries with confirmed prices (an unpriced inpaint endpoint left out). */
export const defaultModels: readonly ModelEntry[] = priceCatalog(modelCatalog, {}).served;
