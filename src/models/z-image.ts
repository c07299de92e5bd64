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
import type { ModelDefaults, ModelDefinition, ModelEntry } from './registry.js';
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
  pricing: {
    unit: 'megapixel',
    rateUsd: '0.005',
    megapixelPixels: 1_048_576,
    rounding: 'ceil_per_image',
    promptExpansionUsd: '0.0025',
  },
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
  pricing: {
    unit: 'megapixel',
    rateUsd: '0.0085',
    megapixelPixels: 1_048_576,
    rounding: 'ceil_per_image',
    promptExpansionUsd: '0.0025',
  },
};

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
