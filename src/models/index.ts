import type { ModelEntry } from './registry.js';
import { zImageTurbo, zImageTurboLora } from './z-image.js';

/** The models this service serves out of the box. A new model is one entry here (and, if it has new fields, one schema). */
export const defaultModelEntries: readonly ModelEntry[] = [zImageTurbo, zImageTurboLora];

export * from './registry.js';
export { zImageTurbo, zImageTurboLora } from './z-image.js';
