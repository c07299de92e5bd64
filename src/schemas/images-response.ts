/**
 * The success body of `POST /v1/images/generations`: OpenAI's
 * ImagesResponse (which the OpenAI SDKs parse) plus `meta`, aimlapi's usage
 * block and what fal told us about the job. OpenAI SDKs pass unknown
 * top-level fields such as `meta` through untouched.
 */
import type { FromSchema } from 'json-schema-to-ts';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

const urlField = { type: 'string', description: 'Where to download the image (response_format "url").' } as const;
const b64Field = { type: 'string', description: 'The image file as bare base64, no data: prefix (response_format "b64_json").' } as const;
const revisedPromptField = { type: 'string', description: 'The prompt after prompt expansion, when it was on.' } as const;

export const imagesResponseSchema = {
  $schema: DRAFT_07,
  title: 'Images response',
  description: "OpenAI's ImagesResponse plus meta (usage in aimlapi credits, seed, per-image facts, fal's request id).",
  type: 'object',
  properties: {
    created: { type: 'integer', minimum: 0, description: 'Unix time in seconds.' },
    data: {
      type: 'array',
      description: 'One item per image fal returned, in order.',
      items: {
        oneOf: [
          {
            type: 'object',
            properties: { url: urlField, revised_prompt: revisedPromptField },
            required: ['url'],
            additionalProperties: false,
          },
          {
            type: 'object',
            properties: { b64_json: b64Field, revised_prompt: revisedPromptField },
            required: ['b64_json'],
            additionalProperties: false,
          },
        ],
      },
    },
    output_format: { type: 'string', enum: ['png', 'jpeg', 'webp'], description: 'The format of every image in data.' },
    size: { type: 'string', pattern: '^[1-9][0-9]*x[1-9][0-9]*$', description: 'The size requested, as WIDTHxHEIGHT.' },
    meta: {
      type: 'object',
      properties: {
        usage: {
          type: 'object',
          description: 'What this request costs the caller. $1 = 2,000,000 credits (aimlapi).',
          properties: {
            credits_used: { type: 'integer', minimum: 0 },
            tokens_used: { type: 'integer', minimum: 0, description: 'Same value as credits_used, under the name older aimlapi clients read.' },
            cost_usd: { type: 'string', pattern: '^[0-9]+\\.[0-9]{6}$', description: 'The charge in USD, exact to the micro-dollar.' },
          },
          required: ['credits_used', 'tokens_used', 'cost_usd'],
          additionalProperties: false,
        },
        seed: { type: ['integer', 'null'], description: 'The seed fal used (null only if fal did not report one).' },
        images: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              width: { type: 'integer', minimum: 1 },
              height: { type: 'integer', minimum: 1 },
              content_type: { type: 'string' },
              has_nsfw_concept: { type: 'boolean', description: "fal's safety checker flag; flagged images are returned as fal returned them." },
            },
            required: ['width', 'height', 'content_type', 'has_nsfw_concept'],
            additionalProperties: false,
          },
        },
        request_id: {
          type: 'string',
          description:
            'Our id for this request: unique across every key, the id of its usage row and billing event. The x-request-id header ' +
            'echoes what the caller sent there (a label unique only within its key), or carries this id when nothing was sent.',
        },
        fal_request_id: { type: 'string', description: "fal's id of the (first) job that made these images." },
        fal_request_ids: {
          type: 'array',
          items: { type: 'string' },
          minItems: 1,
          description: 'Every fal job of the request, in the order of their images (n above the model’s per-job maximum fans out into several jobs).',
        },
        ignored_params: {
          type: 'array',
          items: { type: 'string' },
          minItems: 1,
          uniqueItems: true,
          description:
            'Present when the request carried OpenAI hints the model does not act on (quality, style, background "auto", moderation, ' +
            'output_compression, partial_images without stream): their names, in the order sent. They changed neither the images nor the price. ' +
            'The x-ignored-params header carries the same list.',
        },
      },
      required: ['usage', 'seed', 'images', 'request_id', 'fal_request_id', 'fal_request_ids'],
      additionalProperties: false,
    },
  },
  required: ['created', 'data', 'meta'],
  additionalProperties: false,
} as const;

export type ImagesResponse = FromSchema<typeof imagesResponseSchema>;
export type ImagesResponseMeta = ImagesResponse['meta'];
export type ImagesResponseUsage = ImagesResponseMeta['usage'];
