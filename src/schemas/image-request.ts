/**
 * Request bodies of `POST /v1/images/generations`, one schema per model
 * family. Each is written once here; `schemas/*.json` is emitted from these
 * (scripts/emit-schemas.ts) and the TypeScript types are derived from them.
 */
import type { FromSchema } from 'json-schema-to-ts';
import { falImageFields, lorasField, openAiImageFields, providerField } from './fields.js';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

export const zImageTurboRequestSchema = {
  $schema: DRAFT_07,
  title: 'Z-Image Turbo image generation request',
  description:
    'Body of POST /v1/images/generations for alibaba/z-image-turbo (fal-ai/z-image/turbo). aimlapi and OpenAI field names are both accepted; unknown fields are refused.',
  type: 'object',
  properties: { ...falImageFields, provider: providerField, ...openAiImageFields },
  required: ['model', 'prompt'],
  additionalProperties: false,
} as const;

export const zImageTurboLoraRequestSchema = {
  $schema: DRAFT_07,
  title: 'Z-Image Turbo LoRA image generation request',
  description:
    'Body of POST /v1/images/generations for alibaba/z-image-turbo-lora (fal-ai/z-image/turbo/lora): the Z-Image Turbo fields plus up to 3 LoRAs.',
  type: 'object',
  properties: { ...falImageFields, loras: lorasField, ...openAiImageFields },
  required: ['model', 'prompt'],
  additionalProperties: false,
} as const;

export type ZImageTurboRequest = FromSchema<typeof zImageTurboRequestSchema>;
export type ZImageTurboLoraRequest = FromSchema<typeof zImageTurboLoraRequestSchema>;

/**
 * Every field any request schema may carry, for code that reads a body
 * already validated against one model's schema. Sound because each model
 * schema is assembled from the same field definitions (src/schemas/fields.ts).
 */
const anyImageRequestFields = {
  type: 'object',
  properties: { ...falImageFields, provider: providerField, loras: lorasField, ...openAiImageFields },
  required: ['model', 'prompt'],
  additionalProperties: false,
} as const;

export type ImageRequestFields = FromSchema<typeof anyImageRequestFields>;
export type LoraWeight = NonNullable<ImageRequestFields['loras']>[number];
export type ImageSizeValue = NonNullable<ImageRequestFields['image_size']>;
export type OutputFormat = NonNullable<ImageRequestFields['output_format']>;
export type ResponseFormat = NonNullable<ImageRequestFields['response_format']>;
