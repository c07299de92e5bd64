import type { ModelEntry } from './registry.js';
import { zImageTurbo, zImageTurboLora } from './z-image.js';

/**
 * The models this service serves out of the box. Adding a model is one entry
 * here (declared next to its family, like ./z-image.ts) plus, when it takes
 * fields no schema has yet, one schema in src/schemas/.
 */
export const defaultModels: readonly ModelEntry[] = [zImageTurbo, zImageTurboLora];
