/**
 * Black Forest Labs' FLUX models on fal, under aimlapi's model names
 * (`flux/schnell`, `flux/dev`, `blackforestlabs/flux-2-lora`, as aimlapi's
 * API reference lists them), with fal's endpoint ids as aliases.
 *
 * Prices are fal's (REFERENCE §4, fal's model pages): FLUX pages say an
 * image is billed rounded up to the next whole megapixel. fal does not say
 * whether that megapixel is 10^6 or 2^20 pixels; 2^20 is used, as for
 * Z-Image, and the ledger keeps fal's own billable units beside our estimate
 * so a difference shows.
 *
 * Not modelled: fal-ai/flux-2/lora multiplies its price when the LoRAs sum
 * to more than 2 GB (fal's page). We cannot know a LoRA's size before fal
 * loads it; such jobs are billed at the base rate and show up as a
 * disagreement with fal's units in the ledger.
 */
import type { ModelEntry } from './registry.js';
import { flux2LoraRequestSchema, fluxDevRequestSchema, fluxSchnellRequestSchema } from '../schemas/image-request.js';

/** FLUX.1's public release (2024-08-01). */
const FLUX_1_RELEASED = 1722470400;
/** FLUX.2's public release, on fal the same day (2025-11-25). */
const FLUX_2_RELEASED = 1764028800;

export const fluxSchnell: ModelEntry = {
  id: 'flux/schnell',
  aliases: ['fal-ai/flux/schnell'],
  endpoint: 'fal-ai/flux/schnell',
  ownedBy: 'black-forest-labs',
  created: FLUX_1_RELEASED,
  description: 'FLUX.1 [schnell] (12B parameters): the fastest FLUX, good images in 1 to 4 steps.',
  requestSchema: fluxSchnellRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: {
    image_size: 'landscape_4_3',
    num_images: 1,
    num_inference_steps: 4,
    guidance_scale: 3.5,
    output_format: 'jpeg',
    enable_safety_checker: true,
    acceleration: 'none',
  },
  pricing: { unit: 'megapixel', rateUsd: '0.003', megapixelPixels: 1_048_576, rounding: 'ceil_per_image' },
};

export const fluxDev: ModelEntry = {
  id: 'flux/dev',
  aliases: ['fal-ai/flux/dev'],
  endpoint: 'fal-ai/flux/dev',
  ownedBy: 'black-forest-labs',
  created: FLUX_1_RELEASED,
  description: 'FLUX.1 [dev] (12B parameters): high-quality text-to-image, 1 to 50 steps.',
  requestSchema: fluxDevRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: {
    image_size: 'landscape_4_3',
    num_images: 1,
    num_inference_steps: 28,
    guidance_scale: 3.5,
    output_format: 'jpeg',
    enable_safety_checker: true,
    acceleration: 'none',
  },
  pricing: { unit: 'megapixel', rateUsd: '0.025', megapixelPixels: 1_048_576, rounding: 'ceil_per_image' },
};

export const flux2Lora: ModelEntry = {
  id: 'blackforestlabs/flux-2-lora',
  aliases: ['fal-ai/flux-2/lora'],
  endpoint: 'fal-ai/flux-2/lora',
  ownedBy: 'black-forest-labs',
  created: FLUX_2_RELEASED,
  description: 'FLUX.2 [dev] (32B parameters) with up to 3 LoRA weights (https URLs or Hugging Face repos) applied on top.',
  requestSchema: flux2LoraRequestSchema,
  maxImagesPerJob: 4,
  maxImagesPerRequest: 10,
  defaults: {
    image_size: 'landscape_4_3',
    num_images: 1,
    num_inference_steps: 28,
    guidance_scale: 2.5,
    output_format: 'png',
    enable_safety_checker: true,
    // aimlapi documents true; fal's default is followed, as for Z-Image.
    enable_prompt_expansion: false,
    acceleration: 'regular',
  },
  pricing: {
    unit: 'megapixel',
    rateUsd: '0.021',
    megapixelPixels: 1_048_576,
    rounding: 'ceil_per_image',
    // fal's price for this endpoint is the per-megapixel rate alone; expansion carries no fee there.
    promptExpansionUsd: '0',
  },
};
