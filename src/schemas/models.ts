/**
 * `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model list shape,
 * each model also carrying what a router needs to use it without reading docs.
 */
import type { FromSchema } from 'json-schema-to-ts';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

const modelObject = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { const: 'model' },
    created: { type: 'integer', minimum: 0 },
    owned_by: { type: 'string' },
    type: { const: 'openai/image-generations', description: 'What the model does: image generation through POST /v1/images/generations.' },
    description: { type: 'string' },
    aliases: { type: 'array', items: { type: 'string' }, description: 'Other exact names that select this model.' },
    endpoint: { type: 'string', description: "The fal endpoint id that serves it." },
    capabilities: {
      type: 'array',
      items: { enum: ['generations', 'edits', 'inpaint'] },
      description:
        'What the model does: "generations" (POST /v1/images/generations), "edits" (POST /v1/images/edits, or image_url on a generation), "inpaint" (an edit with a mask).',
    },
    edit_endpoints: {
      type: 'object',
      description: 'The fal endpoints edits go to: image_to_image without a mask, inpaint with one.',
      properties: {
        image_to_image: { type: 'object', properties: { endpoint: { type: 'string' }, usd_per_unit: { type: 'string' } }, required: ['endpoint', 'usd_per_unit'], additionalProperties: false },
        inpaint: { type: 'object', properties: { endpoint: { type: 'string' }, usd_per_unit: { type: 'string' } }, required: ['endpoint', 'usd_per_unit'], additionalProperties: false },
      },
      required: ['image_to_image'],
      additionalProperties: false,
    },
    limits: {
      type: 'object',
      properties: {
        max_images_per_request: { type: 'integer', minimum: 1, description: 'The largest n.' },
        max_images_per_job: { type: 'integer', minimum: 1, description: 'The largest num_images one fal job makes; a larger n is split into several jobs.' },
        prompt_max_length: { type: 'integer', minimum: 1 },
        image_size_presets: { type: 'object', additionalProperties: { type: 'string', pattern: '^[0-9]+x[0-9]+$' } },
        min_side: { type: 'integer' },
        max_side: { type: 'integer' },
        side_multiple_of: { type: 'integer' },
        max_loras: { type: 'integer', minimum: 0 },
        min_inference_steps: { type: 'integer', minimum: 1, description: 'The smallest num_inference_steps; absent when the model takes no steps.' },
        max_inference_steps: { type: 'integer', minimum: 1, description: 'The largest num_inference_steps; absent when the model takes no steps.' },
      },
      required: ['max_images_per_request', 'max_images_per_job', 'prompt_max_length', 'image_size_presets', 'max_loras'],
      additionalProperties: false,
    },
    pricing: {
      type: 'object',
      description: "fal's price for the model, before this service's markup; `caller_markup` is the multiplier applied to it.",
      properties: {
        unit: { enum: ['megapixel', 'image', 'request'] },
        usd_per_unit: { type: 'string', pattern: '^[0-9]+(\\.[0-9]+)?$' },
        megapixel_pixels: { type: 'integer' },
        rounding: { type: 'string' },
        prompt_expansion_usd: { type: 'string' },
        caller_markup: { type: 'string' },
      },
      required: ['unit', 'usd_per_unit', 'caller_markup'],
      additionalProperties: false,
    },
  },
  required: ['id', 'object', 'created', 'owned_by', 'type', 'aliases', 'capabilities', 'limits', 'pricing'],
  additionalProperties: false,
} as const;

export const modelSchema = { $schema: DRAFT_07, title: 'Model', ...modelObject } as const;

export const modelListSchema = {
  $schema: DRAFT_07,
  title: 'Model list',
  type: 'object',
  properties: { object: { const: 'list' }, data: { type: 'array', items: modelObject } },
  required: ['object', 'data'],
  additionalProperties: false,
} as const;

export type ModelObject = FromSchema<typeof modelSchema>;
export type ModelList = FromSchema<typeof modelListSchema>;
