/**
 * The body of a `usage.settled` billing webhook: the Standard Webhooks
 * envelope (`type`, `timestamp`, `data`) plus the event id, which is also
 * the `webhook-id` header. One event per settled request; its id never
 * changes between attempts, so a receiver de-duplicates on it.
 */
import type { FromSchema } from 'json-schema-to-ts';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';
/** The one timestamp format the ledger stores: UTC, milliseconds, fixed width. */
const ISO_UTC = '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$';

export const usageSettledEventSchema = {
  $schema: DRAFT_07,
  title: 'usage.settled event',
  description: 'Sent to BILLING_WEBHOOK_URL once a request is charged. Delivered at least once, in settlement order per key.',
  type: 'object',
  properties: {
    id: {
      type: 'string',
      pattern: '^evt_[^.]+$',
      description: 'The event id (equal to the webhook-id header): evt_ followed by our request id (data.request_id) with any "." replaced by "~". Stable across retries.',
    },
    type: { type: 'string', const: 'usage.settled' },
    timestamp: { type: 'string', pattern: ISO_UTC, description: 'When the event was recorded: in the same transaction as the charge.' },
    data: {
      type: 'object',
      properties: {
        request_id: {
          type: 'string',
          description:
            "Our request id: unique across every key, the event's id and the usage export row of the same id. De-duplicate and join on this one.",
        },
        client_request_id: {
          type: ['string', 'null'],
          description:
            "The x-request-id the caller sent with the request (null when none): its own label, unique only within key_id, so two keys may send the same one. For showing the caller; never a key on its own.",
        },
        key_id: { type: 'string', description: 'The API key charged.' },
        model: { type: 'string', description: 'The public model id the caller asked for.' },
        user: { type: ['string', 'null'], description: "The caller's OpenAI `user` field, if sent." },
        images: { type: 'integer', minimum: 0, description: 'Images delivered and billed.' },
        fal_request_ids: {
          type: 'array',
          items: { type: 'string' },
          description: "fal's ids of the jobs whose images were billed.",
        },
        charge_usd: { type: 'string', pattern: '^[0-9]+\\.[0-9]{6}$', description: 'What the caller is charged, exact to the micro-dollar.' },
        credits: { type: 'integer', minimum: 0, description: 'The same charge in aimlapi credits ($1 = 2,000,000 credits).' },
        created_at: { type: 'string', pattern: ISO_UTC, description: 'When the request was received (reserved).' },
        settled_at: { type: 'string', pattern: ISO_UTC, description: 'When the charge was committed; usage ranges and exports use this time.' },
      },
      required: ['request_id', 'client_request_id', 'key_id', 'model', 'user', 'images', 'fal_request_ids', 'charge_usd', 'credits', 'created_at', 'settled_at'],
      additionalProperties: false,
    },
  },
  required: ['id', 'type', 'timestamp', 'data'],
  additionalProperties: false,
} as const;

export type UsageSettledEvent = FromSchema<typeof usageSettledEventSchema>;
export type UsageSettledData = UsageSettledEvent['data'];
