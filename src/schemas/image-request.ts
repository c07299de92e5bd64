/**
 * Request bodies of `POST /v1/images/generations`, one schema per model
 * (or per models sharing one field set), composed with ./request-builder.ts.
 * Each is written once here; `schemas/*.json` is emitted from these
 * (scripts/emit-schemas.ts) and the TypeScript types are derived from them.
 */
import type { FromSchema } from 'json-schema-to-ts';
import { falImageFields, lorasField, openAiImageFields, providerField } from './fields.js';
import {
  accelerationField,
  guidanceScaleField,
  imageRequestSchema,
  imageSizeField,
  inferenceStepsField,
  negativePromptField,
  numImagesField,
  outputFormatField,
} from './request-builder.js';

export const zImageTurboRequestSchema = imageRequestSchema({
  title: 'Z-Image Turbo image generation request',
  description:
    'Body of POST /v1/images/generations for alibaba/z-image-turbo (fal-ai/z-image/turbo). aimlapi and OpenAI field names are both accepted; unknown fields are refused.',
  fields: { ...falImageFields, provider: providerField },
});

export const zImageTurboLoraRequestSchema = imageRequestSchema({
  title: 'Z-Image Turbo LoRA image generation request',
  description:
    'Body of POST /v1/images/generations for alibaba/z-image-turbo-lora (fal-ai/z-image/turbo/lora): the Z-Image Turbo fields plus up to 3 LoRAs.',
  fields: { ...falImageFields, loras: lorasField },
});

export type ZImageTurboRequest = FromSchema<typeof zImageTurboRequestSchema>;
export type ZImageTurboLoraRequest = FromSchema<typeof zImageTurboLoraRequestSchema>;

/**
 * fal's published input of fal-ai/z-image/base: steps 1-50 (28), guidance
 * 1-20 (4), negative_prompt, png default, no prompt expansion. fal states no
 * side limits beyond its generic ImageSize; the Turbo family's 512-2048 in
 * steps of 32 (aimlapi's, for the same model family) are kept.
 */
const zImageBaseFields = {
  image_size: imageSizeField({ minSide: 512, maxSide: 2048, multipleOf: 32, defaultPreset: 'landscape_4_3' }),
  num_images: numImagesField(4),
  num_inference_steps: inferenceStepsField(1, 50, 28),
  seed: falImageFields.seed,
  guidance_scale: guidanceScaleField(1, 20, 4),
  negative_prompt: negativePromptField,
  output_format: outputFormatField(['jpeg', 'png', 'webp'], 'png'),
  enable_safety_checker: falImageFields.enable_safety_checker,
  acceleration: accelerationField('regular'),
} as const;

export const zImageBaseRequestSchema = imageRequestSchema({
  title: 'Z-Image Base image generation request',
  description: 'Body of POST /v1/images/generations for alibaba/z-image-base (fal-ai/z-image/base): the undistilled Z-Image, with guidance and a negative prompt.',
  fields: zImageBaseFields,
});

export const zImageBaseLoraRequestSchema = imageRequestSchema({
  title: 'Z-Image Base LoRA image generation request',
  description: 'Body of POST /v1/images/generations for alibaba/z-image-base-lora (fal-ai/z-image/base/lora): the Z-Image Base fields plus up to 3 LoRAs.',
  fields: { ...zImageBaseFields, loras: lorasField },
});

/**
 * FLUX.1 [schnell] and [dev] as fal publishes them (steps, guidance, jpeg
 * default, no webp, acceleration default none). Side limits are aimlapi's
 * for the same model names (schnell 64-1536, dev 512-1536, multiples of 32):
 * fal's generic ImageSize allows more, so these are the tighter pair.
 */
export const fluxSchnellRequestSchema = imageRequestSchema({
  title: 'FLUX.1 [schnell] image generation request',
  description: 'Body of POST /v1/images/generations for flux/schnell (fal-ai/flux/schnell): FLUX.1 [schnell], 1 to 12 steps.',
  fields: {
    image_size: imageSizeField({ minSide: 64, maxSide: 1536, multipleOf: 32, defaultPreset: 'landscape_4_3' }),
    num_images: numImagesField(4),
    num_inference_steps: inferenceStepsField(1, 12, 4),
    seed: falImageFields.seed,
    guidance_scale: guidanceScaleField(1, 20, 3.5),
    output_format: outputFormatField(['jpeg', 'png'], 'jpeg'),
    enable_safety_checker: falImageFields.enable_safety_checker,
    acceleration: accelerationField('none'),
  },
});

export const fluxDevRequestSchema = imageRequestSchema({
  title: 'FLUX.1 [dev] image generation request',
  description: 'Body of POST /v1/images/generations for flux/dev (fal-ai/flux/dev): FLUX.1 [dev], 1 to 50 steps.',
  fields: {
    image_size: imageSizeField({ minSide: 512, maxSide: 1536, multipleOf: 32, defaultPreset: 'landscape_4_3' }),
    num_images: numImagesField(4),
    num_inference_steps: inferenceStepsField(1, 50, 28),
    seed: falImageFields.seed,
    guidance_scale: guidanceScaleField(1, 20, 3.5),
    output_format: outputFormatField(['jpeg', 'png'], 'jpeg'),
    enable_safety_checker: falImageFields.enable_safety_checker,
    acceleration: accelerationField('none'),
  },
});

/**
 * FLUX.2 [dev] with LoRAs: fal's sides 512-2048 (aimlapi adds multiples of
 * 32), steps 4-50 (28), guidance 0-20 (2.5), png default, prompt expansion
 * that fal's price table lists no fee for.
 */
export const flux2LoraRequestSchema = imageRequestSchema({
  title: 'FLUX.2 [dev] LoRA image generation request',
  description:
    'Body of POST /v1/images/generations for blackforestlabs/flux-2-lora (fal-ai/flux-2/lora): FLUX.2 [dev] with up to 3 LoRAs.',
  fields: {
    image_size: imageSizeField({ minSide: 512, maxSide: 2048, multipleOf: 32, defaultPreset: 'landscape_4_3' }),
    num_images: numImagesField(4),
    num_inference_steps: inferenceStepsField(4, 50, 28),
    seed: falImageFields.seed,
    guidance_scale: guidanceScaleField(0, 20, 2.5),
    output_format: outputFormatField(['jpeg', 'png', 'webp'], 'png'),
    enable_safety_checker: falImageFields.enable_safety_checker,
    enable_prompt_expansion: {
      type: 'boolean',
      description: "Let the model rewrite the prompt with more detail before generating. fal lists no extra charge for it on this endpoint. Default false (fal's default).",
    },
    acceleration: accelerationField('regular'),
    loras: lorasField,
  },
});

/**
 * Every field any request schema may carry, for code that reads a body
 * already validated against one model's schema. Sound because each model
 * schema is assembled from the same field definitions (src/schemas/fields.ts).
 */
const anyImageRequestFields = {
  type: 'object',
  properties: {
    ...falImageFields,
    provider: providerField,
    loras: lorasField,
    guidance_scale: guidanceScaleField(0, 20, 0),
    negative_prompt: negativePromptField,
    ...openAiImageFields,
  },
  required: ['model', 'prompt'],
  additionalProperties: false,
} as const;

export type ImageRequestFields = FromSchema<typeof anyImageRequestFields>;
export type LoraWeight = NonNullable<ImageRequestFields['loras']>[number];
export type ImageSizeValue = NonNullable<ImageRequestFields['image_size']>;
export type OutputFormat = NonNullable<ImageRequestFields['output_format']>;
export type ResponseFormat = NonNullable<ImageRequestFields['response_format']>;
