/**
 * The Server-Sent Events of `POST /v1/images/generations` with
 * `stream: true`. The openai SDK's streaming `images.generate` yields the
 * JSON of every `data:` line and throws on one that carries `error`, so the
 * completed event mirrors OpenAI's `image_generation.completed`; progress is
 * ours (OpenAI has none), and SDK callers see it as one more event type.
 * The error event's data is the ordinary error body (error-response.json).
 */
import type { FromSchema } from 'json-schema-to-ts';
import { imagesResponseSchema } from './images-response.js';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

const usageShare = {
  type: 'object',
  description:
    "This image's share of the request's charge. The shares of a request's images add up exactly to its charge " +
    '(meta.usage of the last completed event), which is settled once, as without streaming.',
  properties: {
    credits_used: { type: 'integer', minimum: 0 },
    tokens_used: { type: 'integer', minimum: 0, description: 'Same value as credits_used, under the name older aimlapi clients read.' },
    cost_usd: { type: 'string', pattern: '^[0-9]+\\.[0-9]{6}$' },
  },
  required: ['credits_used', 'tokens_used', 'cost_usd'],
  additionalProperties: false,
} as const;

export const imageGenerationProgressEventSchema = {
  $schema: DRAFT_07,
  title: 'image_generation.progress event',
  description:
    'Sent while fal works, whenever the state of one of the request\'s fal jobs changes (a request with n above the model\'s ' +
    'per-job maximum runs several jobs, told apart by job_index).',
  type: 'object',
  properties: {
    type: { type: 'string', const: 'image_generation.progress' },
    status: {
      type: 'string',
      enum: ['queued', 'in_progress', 'completed'],
      description: 'queued: waiting for a worker; in_progress: generating; completed: the job is done (its images arrive once every job is).',
    },
    queue_position: { type: ['integer', 'null'], minimum: 0, description: 'Jobs ahead of this one in the queue, when the provider said; else null.' },
    job_index: { type: 'integer', minimum: 0, description: 'Which fal job of the request, from 0.' },
    job_count: { type: 'integer', minimum: 1, description: 'How many fal jobs the request runs.' },
    created_at: { type: 'integer', minimum: 0, description: 'Unix time in seconds.' },
  },
  required: ['type', 'status', 'queue_position', 'job_index', 'job_count', 'created_at'],
  additionalProperties: false,
} as const;

export const imageGenerationCompletedEventSchema = {
  $schema: DRAFT_07,
  title: 'image_generation.completed event',
  description:
    "One per image, in order, sent once every job has completed and the request is settled. OpenAI's completed event " +
    '(b64_json, created_at, size, quality, background, output_format, usage) plus image_index, and on the last image the ' +
    'meta block of the non-streamed response.',
  type: 'object',
  properties: {
    type: { type: 'string', const: 'image_generation.completed' },
    b64_json: { type: 'string', description: 'The image file as bare base64, no data: prefix. Streaming always delivers base64.' },
    created_at: { type: 'integer', minimum: 0, description: 'Unix time in seconds.' },
    size: { type: 'string', pattern: '^[1-9][0-9]*x[1-9][0-9]*$', description: 'The size requested, as WIDTHxHEIGHT.' },
    quality: { type: 'string', const: 'auto' },
    background: { type: 'string', const: 'opaque' },
    output_format: { type: 'string', enum: ['png', 'jpeg', 'webp'] },
    image_index: { type: 'integer', minimum: 0, description: 'Position of the image in the request, from 0.' },
    usage: usageShare,
    meta: { ...imagesResponseSchema.properties.meta, description: 'On the last completed event only: the whole request (usage is its total charge).' },
  },
  required: ['type', 'b64_json', 'created_at', 'size', 'quality', 'background', 'output_format', 'image_index', 'usage'],
  additionalProperties: false,
} as const;

export type ImageGenerationProgressEvent = FromSchema<typeof imageGenerationProgressEventSchema>;
export type ImageGenerationCompletedEvent = FromSchema<typeof imageGenerationCompletedEventSchema>;
