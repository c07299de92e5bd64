/**
 * The one error body every failure is answered with; OpenAI SDKs read
 * `error.message`, `error.type`, `error.param` and `error.code` from it.
 * `src/errors.ts` writes it; test/schemas checks the two agree.
 */
import type { FromSchema } from 'json-schema-to-ts';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

export const errorResponseSchema = {
  $schema: DRAFT_07,
  title: 'Error response',
  description: "OpenAI's error envelope.",
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: {
        message: { type: 'string', description: 'What went wrong and, for a 400, the exact field path and limit.' },
        type: {
          type: 'string',
          enum: [
            'invalid_request_error',
            'authentication_error',
            'permission_error',
            'not_found_error',
            'conflict_error',
            'rate_limit_error',
            'insufficient_quota',
            'upstream_error',
            'timeout_error',
            'service_unavailable',
            'server_error',
          ],
        },
        param: { type: ['string', 'null'], description: 'The top-level request field at fault, or null.' },
        code: { type: 'string', description: 'A stable machine-readable code, e.g. model_not_found.' },
      },
      required: ['message', 'type', 'param', 'code'],
      additionalProperties: false,
    },
  },
  required: ['error'],
  additionalProperties: false,
} as const;

export type ErrorResponseBody = FromSchema<typeof errorResponseSchema>;
