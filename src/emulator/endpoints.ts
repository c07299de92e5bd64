/**
 * The endpoints the emulator serves: one declarative entry per fal endpoint
 * id, with fal's own published input constraints (not the gateway's
 * stricter ones: fal has no prompt maxLength, for example) and the key of
 * its row in the price table. Adding an endpoint is adding an entry.
 *
 * Every entry describes a text-to-image app, or an image-to-image / inpaint
 * app (`images`); the job engine reads the common fields (prompt, image_size,
 * num_images, seed, output_format, sync_mode, enable_safety_checker,
 * enable_prompt_expansion) from the validated input.
 */
import { IMAGE_SIZE_PRESETS } from './images.js';
import { largestImage, type ObjectRule, type Rule } from './validate.js';

export interface EndpointSpec {
  id: string;
  /** Row in the price table. */
  priceKey: string;
  input: ObjectRule;
  /** An image-to-image or inpaint app: the input fields holding the image (and mask) URLs it fetches. */
  images?: { image: string; mask?: string };
}

const PRESETS = Object.keys(IMAGE_SIZE_PRESETS);
const ACCELERATION = ['none', 'regular', 'high'] as const;

/** fal's generic ImageSize: width/height > 0, at most 14142; some endpoints publish a megapixel bound too. */
const imageSize = (def = 'landscape_4_3', bounds: { minimum?: number; maximum?: number; maxPixels?: number } = {}): Rule => ({
  type: 'image_size',
  presets: PRESETS,
  default: def,
  ...(bounds.minimum === undefined ? { exclusiveMinimum: 0 } : { minimum: bounds.minimum }),
  maximum: bounds.maximum ?? 14142,
  ...(bounds.maxPixels === undefined ? {} : { maxPixels: bounds.maxPixels }),
});

/**
 * Z-Image Turbo's resolution limit: "Max Resolution: 4 megapixels"
 * (https://fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo);
 * the LoRA endpoint runs the same model
 * (https://fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo-lora).
 * fal does not say whether a megapixel is 10^6 or 2^20 pixels
 * (REFERENCE.md §4): 4 × 2^20 = 2048 × 2048, the largest size the gateway's
 * Z-Image Turbo models accept (src/schemas/image-request.ts).
 */
export const Z_IMAGE_TURBO_MAX_PIXELS = 2048 * 2048;

const loras: Rule = {
  type: 'array',
  maxItems: 3,
  items: {
    type: 'object',
    properties: {
      path: { type: 'string' },
      scale: { type: 'number', minimum: 0, maximum: 4, default: 1 },
    },
    required: ['path'],
  },
};

const common = (o: {
  steps: { minimum: number; maximum: number; default: number };
  formats: readonly string[];
  defaultFormat: string;
  acceleration: string;
}): Record<string, Rule> => ({
  prompt: { type: 'string' },
  image_size: imageSize(),
  num_inference_steps: { type: 'integer', ...o.steps },
  seed: { type: 'integer' },
  sync_mode: { type: 'boolean', default: false },
  num_images: { type: 'integer', minimum: 1, maximum: 4, default: 1 },
  enable_safety_checker: { type: 'boolean', default: true },
  output_format: { type: 'string', enum: o.formats, default: o.defaultFormat },
  acceleration: { type: 'string', enum: ACCELERATION, default: o.acceleration },
});

const PNG_JPEG_WEBP = ['jpeg', 'png', 'webp'] as const;

const zImageTurbo: Record<string, Rule> = {
  ...common({ steps: { minimum: 1, maximum: 8, default: 8 }, formats: PNG_JPEG_WEBP, defaultFormat: 'png', acceleration: 'regular' }),
  image_size: imageSize('landscape_4_3', { maxPixels: Z_IMAGE_TURBO_MAX_PIXELS }),
  enable_prompt_expansion: { type: 'boolean', default: false },
};

const zImageBase: Record<string, Rule> = {
  ...common({ steps: { minimum: 1, maximum: 50, default: 28 }, formats: PNG_JPEG_WEBP, defaultFormat: 'png', acceleration: 'regular' }),
  guidance_scale: { type: 'number', minimum: 1, maximum: 20, default: 4 },
  negative_prompt: { type: 'string', default: '' },
};

const fluxDev: Record<string, Rule> = {
  ...common({ steps: { minimum: 1, maximum: 50, default: 28 }, formats: ['jpeg', 'png'], defaultFormat: 'jpeg', acceleration: 'none' }),
  guidance_scale: { type: 'number', minimum: 1, maximum: 20, default: 3.5 },
};

const fluxSchnell: Record<string, Rule> = {
  ...common({ steps: { minimum: 1, maximum: 12, default: 4 }, formats: ['jpeg', 'png'], defaultFormat: 'jpeg', acceleration: 'none' }),
  // fal's API reference for fal-ai/flux/schnell lists guidance_scale too (1-20, default 3.5).
  guidance_scale: { type: 'number', minimum: 1, maximum: 20, default: 3.5 },
};

const flux2Lora: Record<string, Rule> = {
  ...common({ steps: { minimum: 4, maximum: 50, default: 28 }, formats: PNG_JPEG_WEBP, defaultFormat: 'png', acceleration: 'regular' }),
  image_size: imageSize('landscape_4_3', { minimum: 512, maximum: 2048 }),
  guidance_scale: { type: 'number', minimum: 0, maximum: 20, default: 2.5 },
  enable_prompt_expansion: { type: 'boolean', default: false },
  loras,
};

const entry = (id: string, properties: Record<string, Rule>): EndpointSpec => ({
  id,
  priceKey: id,
  input: { type: 'object', properties, required: ['prompt'] },
});

/**
 * Z-Image Turbo's image-to-image and inpaint apps, as fal's API pages and
 * @fal-ai/client 1.10.1's endpoint types give them
 * (https://fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo-image-to-image,
 * .../z-image-turbo-inpaint): the text-to-image fields with `image_size`
 * defaulting to `auto` (the input's size), `image_url`, `strength` (default
 * 0.6; 1 on inpaint), and on inpaint `mask_image_url` and the ControlNet
 * conditioning (`control_scale` 0.75, `control_start` 0, `control_end` 0.8).
 */
const edit = (properties: Record<string, Rule>, inpaint: boolean): Record<string, Rule> => ({
  ...properties,
  image_size: { ...(imageSize('auto') as Extract<Rule, { type: 'image_size' }>), presets: [...PRESETS, 'auto'] },
  image_url: { type: 'string' },
  strength: { type: 'number', minimum: 0, maximum: 1, default: inpaint ? 1 : 0.6 },
  ...(inpaint
    ? {
        mask_image_url: { type: 'string' },
        control_scale: { type: 'number', minimum: 0, maximum: 1, default: 0.75 },
        control_start: { type: 'number', minimum: 0, maximum: 1, default: 0 },
        control_end: { type: 'number', minimum: 0, maximum: 1, default: 0.8 },
      }
    : {}),
});

const editEntry = (id: string, properties: Record<string, Rule>, inpaint: boolean): EndpointSpec => ({
  id,
  priceKey: id,
  input: { type: 'object', properties: edit(properties, inpaint), required: inpaint ? ['prompt', 'image_url', 'mask_image_url'] : ['prompt', 'image_url'] },
  images: inpaint ? { image: 'image_url', mask: 'mask_image_url' } : { image: 'image_url' },
});

export const ENDPOINTS: readonly EndpointSpec[] = [
  entry('fal-ai/z-image/turbo', zImageTurbo),
  entry('fal-ai/z-image/turbo/lora', { ...zImageTurbo, loras }),
  entry('fal-ai/z-image/base', zImageBase),
  entry('fal-ai/z-image/base/lora', { ...zImageBase, loras }),
  entry('fal-ai/flux/schnell', fluxSchnell),
  entry('fal-ai/flux/dev', fluxDev),
  entry('fal-ai/flux-2/lora', flux2Lora),
  editEntry('fal-ai/z-image/turbo/image-to-image', zImageTurbo, false),
  editEntry('fal-ai/z-image/turbo/image-to-image/lora', { ...zImageTurbo, loras }, false),
  editEntry('fal-ai/z-image/turbo/inpaint', zImageTurbo, true),
  editEntry('fal-ai/z-image/turbo/inpaint/lora', { ...zImageTurbo, loras }, true),
];

export function endpointTable(list: readonly EndpointSpec[] = ENDPOINTS): Map<string, EndpointSpec> {
  return new Map(list.map((e) => [e.id, e]));
}

const LARGEST_PRESET = Math.max(...Object.values(IMAGE_SIZE_PRESETS).map((p) => p.width * p.height));

/** The most pixels an image of any of these endpoints can have, by their image_size rules. */
export function largestImagePixels(endpoints: Iterable<EndpointSpec>): number {
  let most = 0;
  for (const e of endpoints) {
    const rule = e.input.properties['image_size'];
    most = Math.max(most, rule?.type === 'image_size' ? largestImage(rule, LARGEST_PRESET) : LARGEST_PRESET);
  }
  return most;
}
