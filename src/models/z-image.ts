/**
 * Tongyi-MAI's Z-Image Turbo on fal, under aimlapi's model names.
 *
 * Aliases: only fal's own endpoint id, which already names exactly one
 * model, so callers coming from fal's SDK can keep their name. No bare
 * names like "z-image-turbo": aimlapi does not use them, and a short name is
 * the kind that later matches two providers' models.
 *
 * Prices mirror fal's model pages (REFERENCE §4). fal does not say how
 * Z-Image rounds or what a megapixel is; we bill ceil(w*h / 2^20) per image,
 * which is the rule aimlapi's published credits imply, and the ledger
 * records fal's own billable units beside our estimate to catch a mismatch.
 */
import type { EditEndpoint, ModelDefaults, ModelDefinition, ModelEdits, ModelEntry, UnconfirmedPricing } from './registry.js';
import type { ModelPricing } from '../metering/pricing.js';
import { zImageTurboEditRequestSchema, zImageTurboLoraEditRequestSchema } from '../schemas/edit-request.js';
import {
  zImageBaseLoraRequestSchema,
  zImageBaseRequestSchema,
  zImageTurboLoraRequestSchema,
  zImageTurboRequestSchema,
} from '../schemas/image-request.js';

/** fal's defaults for both endpoints. aimlapi documents prompt expansion as on; fal's default (off) is what we follow. */
const zImageDefaults: ModelDefaults = {
  image_size: 'landscape_4_3',
  num_images: 1,
  num_inference_steps: 8,
  output_format: 'png',
  enable_safety_checker: true,
  enable_prompt_expansion: false,
  acceleration: 'regular',
};

const turboPricing: ModelPricing = { unit: 'megapixel', rateUsd: '0.005', megapixelPixels: 1_048_576, rounding: 'ceil_per_image', promptExpansionUsd: '0.0025' };
const turboLoraPricing: ModelPricing = { unit: 'megapixel', rateUsd: '0.0085', megapixelPixels: 1_048_576, rounding: 'ceil_per_image', promptExpansionUsd: '0.0025' };

/**
 * fal's inpaint pages (fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo-inpaint)
 * give the fields (image_url, mask_image_url, strength default 1, control_scale, control_start,
 * control_end, image_size default auto) but no source this service relies on states their price, so
 * inpainting is served only when MODEL_PRICES prices the endpoint id; the unit and rounding are the family's.
 */
const inpaintUnconfirmed: UnconfirmedPricing = {
  unit: 'megapixel',
  rateUsd: null,
  megapixelPixels: 1_048_576,
  rounding: 'ceil_per_image',
  promptExpansionUsd: '0.0025',
  unconfirmed: "fal's price for Z-Image Turbo inpainting is not confirmed by any source this service relies on",
};

/**
 * Edits of Z-Image Turbo. fal's API pages and @fal-ai/client 1.10.1's endpoint types
 * (ZImageTurboImageToImageInput, ZImageTurboInpaintInput) give the fields: `image_url`,
 * `strength` 0-1 (default 0.6 for image-to-image, 1 for inpaint), `image_size` default `auto`,
 * `mask_image_url` (white = repaint) on inpaint, and the generation fields with their defaults.
 * Prices: https://fal.ai/models/fal-ai/z-image/turbo/image-to-image ("$0.005 per megapixel") and
 * https://fal.ai/models/fal-ai/z-image/turbo/image-to-image/lora ("$0.0085 per megapixel"), the same
 * as text-to-image; prompt expansion +$0.0025 per request (the same pages' input schema).
 */
const turboEdits: ModelEdits = {
  requestSchema: zImageTurboEditRequestSchema,
  maxSide: 2048,
  imageToImage: { endpoint: 'fal-ai/z-image/turbo/image-to-image', pricing: turboPricing, source: 'https://fal.ai/models/fal-ai/z-image/turbo/image-to-image' },
};

const turboLoraEdits: ModelEdits = {
  requestSchema: zImageTurboLoraEditRequestSchema,
  maxSide: 2048,
  imageToImage: { endpoint: 'fal-ai/z-image/turbo/image-to-image/lora', pricing: turboLoraPricing, source: 'https://fal.ai/models/fal-ai/z-image/turbo/image-to-image/lora' },
};

const INPAINT_SOURCE = 'https://fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo-inpaint';

/** The catalog's entry: the model with its inpaint endpoint, whose price awaits MODEL_PRICES. */
function withInpaint(entry: ModelEntry, inpaint: EditEndpoint<UnconfirmedPricing>): ModelDefinition {
  if (!entry.edits) throw new Error(`${entry.id} has no edits to add inpainting to`);
  return { ...entry, edits: { ...entry.edits, inpaint } };
}

/** Z-Image Turbo's public release (2025-11-27). */
const Z_IMAGE_RELEASED = 1764201600;

export const zImageTurbo: ModelEntry = {
  id: 'alibaba/z-image-turbo',
  aliases: ['fal-ai/z-image/turbo'],
  endpoint: 'fal-ai/z-image/turbo',
  ownedBy: 'alibaba',
  created: Z_IMAGE_RELEASED,
  description: 'Z-Image Turbo (Tongyi-MAI, 6B parameters): fast photorealistic text-to-image with bilingual text rendering, 1 to 8 steps.',
  requestSchema: zImageTurboRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: zImageDefaults,
  pricing: turboPricing,
  edits: turboEdits,
};

export const zImageTurboLora: ModelEntry = {
  id: 'alibaba/z-image-turbo-lora',
  aliases: ['fal-ai/z-image/turbo/lora'],
  endpoint: 'fal-ai/z-image/turbo/lora',
  ownedBy: 'alibaba',
  created: Z_IMAGE_RELEASED,
  description: 'Z-Image Turbo with up to 3 LoRA weights (https URLs or Hugging Face repos) applied on top.',
  requestSchema: zImageTurboLoraRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: zImageDefaults,
  pricing: turboLoraPricing,
  edits: turboLoraEdits,
};

export const zImageTurboDefinition = withInpaint(zImageTurbo, { endpoint: 'fal-ai/z-image/turbo/inpaint', pricing: inpaintUnconfirmed, source: INPAINT_SOURCE });
export const zImageTurboLoraDefinition = withInpaint(zImageTurboLora, { endpoint: 'fal-ai/z-image/turbo/inpaint/lora', pricing: inpaintUnconfirmed, source: INPAINT_SOURCE });

/** fal's defaults for fal-ai/z-image/base and its LoRA endpoint (fal's model page). */
const zImageBaseDefaults: ModelDefaults = {
  image_size: 'landscape_4_3',
  num_images: 1,
  num_inference_steps: 28,
  guidance_scale: 4,
  negative_prompt: '',
  output_format: 'png',
  enable_safety_checker: true,
  acceleration: 'regular',
};

/**
 * Neither REFERENCE nor any fal page we could read states Z-Image Base's
 * price, so the rate is left to configuration: the unit and rounding are the
 * Turbo family's, the rate must come from MODEL_PRICES or the model is not
 * served.
 */
const zImageBaseUnconfirmed = 'fal\'s price for Z-Image Base is not confirmed by any source this service relies on';

/**
 * The exact release day of Z-Image Base is not confirmed; it was public by
 * 2026-02-02 (LoRAs trained on it were published then), which stands in.
 */
const Z_IMAGE_BASE_RELEASED = 1769990400;

/**
 * Not an aimlapi model (aimlapi lists only the Turbo pair), so the names
 * follow the Turbo pair's pattern; fal's endpoint ids are the aliases.
 */
export const zImageBase: ModelDefinition = {
  id: 'alibaba/z-image-base',
  aliases: ['fal-ai/z-image/base'],
  endpoint: 'fal-ai/z-image/base',
  ownedBy: 'alibaba',
  created: Z_IMAGE_BASE_RELEASED,
  description: 'Z-Image Base (Tongyi-MAI, 6B parameters): the undistilled foundation model, with classifier-free guidance and negative prompts, 1 to 50 steps.',
  requestSchema: zImageBaseRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: zImageBaseDefaults,
  pricing: { unit: 'megapixel', rateUsd: null, megapixelPixels: 1_048_576, rounding: 'ceil_per_image', unconfirmed: zImageBaseUnconfirmed },
};

export const zImageBaseLora: ModelDefinition = {
  id: 'alibaba/z-image-base-lora',
  aliases: ['fal-ai/z-image/base/lora'],
  endpoint: 'fal-ai/z-image/base/lora',
  ownedBy: 'alibaba',
  created: Z_IMAGE_BASE_RELEASED,
  description: 'Z-Image Base with up to 3 LoRA weights (https URLs or Hugging Face repos) applied on top.',
  requestSchema: zImageBaseLoraRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: zImageBaseDefaults,
  pricing: { unit: 'megapixel', rateUsd: null, megapixelPixels: 1_048_576, rounding: 'ceil_per_image', unconfirmed: zImageBaseUnconfirmed },
};
