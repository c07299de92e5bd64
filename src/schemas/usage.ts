/**
 * `GET /v1/usage` and `GET /v1/admin/usage`: the query they accept and the
 * JSON report they answer with. The admin report is the caller's report
 * plus what fal billed us and the margin, built from the same parts so the
 * two cannot drift apart.
 */
import type { FromSchema } from 'json-schema-to-ts';
import { USD_PATTERN } from './admin-keys.js';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

export const USAGE_GROUPS = ['day', 'model', 'key'] as const;
export const USAGE_FORMATS = ['json', 'csv', 'jsonl'] as const;

/** Validated by the route; not published as a file (openapi.yaml lists the parameters one by one). */
export const usageQuerySchema = {
  type: 'object',
  properties: {
    from: { type: 'string', minLength: 1, maxLength: 64 },
    to: { type: 'string', minLength: 1, maxLength: 64 },
    model: { type: 'string', minLength: 1, maxLength: 200 },
    key_id: { type: 'string', minLength: 1, maxLength: 200 },
    group_by: { type: 'string', enum: USAGE_GROUPS },
    format: { type: 'string', enum: USAGE_FORMATS },
  },
  additionalProperties: false,
} as const;

export type UsageQuery = FromSchema<typeof usageQuerySchema>;

const SIGNED_USD_PATTERN = '^-?[0-9]+\\.[0-9]{6}$';

const callerAmounts = {
  requests: { type: 'integer', minimum: 0, description: 'Settled requests.' },
  images: { type: 'integer', minimum: 0, description: 'Images delivered and billed.' },
  cost_usd: { type: 'string', pattern: USD_PATTERN, description: 'What the caller is charged, exact to the micro-dollar.' },
  credits: { type: 'integer', minimum: 0, description: 'The same charge in aimlapi credits ($1 = 2,000,000 credits).' },
} as const;
const callerAmountsRequired = ['requests', 'images', 'cost_usd', 'credits'] as const;

const upstreamAmounts = {
  upstream_cost_usd: { type: 'string', pattern: USD_PATTERN, description: 'What fal billed us for these requests.' },
  margin_usd: { type: 'string', pattern: SIGNED_USD_PATTERN, description: 'cost_usd minus upstream_cost_usd (negative when we lost money).' },
} as const;
const upstreamAmountsRequired = ['upstream_cost_usd', 'margin_usd'] as const;

const groupField = {
  type: 'string',
  description: 'The UTC day (YYYY-MM-DD), the model id or the key id, per group_by.',
} as const;

const reportEcho = {
  object: { type: 'string', const: 'usage' },
  from: { type: ['string', 'null'], description: 'The inclusive lower bound on settlement time, as UTC ISO 8601; null when not given.' },
  to: { type: ['string', 'null'], description: 'The exclusive upper bound on settlement time, as UTC ISO 8601; null when not given.' },
  model: { type: ['string', 'null'] },
  key_id: { type: ['string', 'null'], description: 'The key the report covers; null on the admin route when it covers every key.' },
  group_by: { type: ['string', 'null'], enum: [...USAGE_GROUPS, null] },
} as const;
const reportEchoRequired = ['object', 'from', 'to', 'model', 'key_id', 'group_by'] as const;

export const usageReportSchema = {
  $schema: DRAFT_07,
  title: 'Usage report',
  description:
    "GET /v1/usage: the caller's own settled charges, filtered by settlement time. data holds one row per group, ordered by group, when group_by is given; otherwise it is empty.",
  type: 'object',
  properties: {
    ...reportEcho,
    totals: { type: 'object', properties: callerAmounts, required: callerAmountsRequired, additionalProperties: false },
    data: {
      type: 'array',
      items: {
        type: 'object',
        properties: { group: groupField, ...callerAmounts },
        required: ['group', ...callerAmountsRequired],
        additionalProperties: false,
      },
    },
  },
  required: [...reportEchoRequired, 'totals', 'data'],
  additionalProperties: false,
} as const;

const unrecoveredAmounts = {
  upstream_cost_usd: { type: 'string', pattern: USD_PATTERN, description: 'What fal billed that no caller is charged for.' },
  estimated_usd: {
    type: 'string',
    pattern: USD_PATTERN,
    description: 'Of upstream_cost_usd, our estimate for jobs fal reported no cost for: jobs given up as lost (fal never said what became of them), or completed without billed units.',
  },
  jobs: { type: 'integer', minimum: 0, description: 'fal jobs with such a cost.' },
} as const;

export const adminUsageReportSchema = {
  $schema: DRAFT_07,
  title: 'Admin usage report',
  description:
    'GET /v1/admin/usage: the usage report over every key (or key_id), plus upstream cost and margin, and the upstream cost no caller is charged for (unrecovered).',
  type: 'object',
  properties: {
    ...reportEcho,
    unrecovered: {
      type: 'object',
      description:
        'Upstream cost of fal jobs no caller pays for: failed jobs fal billed, jobs of requests answered with an error, jobs fal made on refused submits. Filtered like the report, with from/to applied to when each job ended. Not part of totals, which count settled requests only.',
      properties: {
        ...unrecoveredAmounts,
        by_model: {
          type: 'array',
          items: { type: 'object', properties: { model: { type: 'string' }, ...unrecoveredAmounts }, required: ['model', 'upstream_cost_usd', 'estimated_usd', 'jobs'], additionalProperties: false },
        },
      },
      required: ['upstream_cost_usd', 'estimated_usd', 'jobs', 'by_model'],
      additionalProperties: false,
    },
    totals: {
      type: 'object',
      properties: { ...callerAmounts, ...upstreamAmounts },
      required: [...callerAmountsRequired, ...upstreamAmountsRequired],
      additionalProperties: false,
    },
    data: {
      type: 'array',
      items: {
        type: 'object',
        properties: { group: groupField, ...callerAmounts, ...upstreamAmounts },
        required: ['group', ...callerAmountsRequired, ...upstreamAmountsRequired],
        additionalProperties: false,
      },
    },
  },
  required: [...reportEchoRequired, 'totals', 'data', 'unrecovered'],
  additionalProperties: false,
} as const;

export type UsageReportView = FromSchema<typeof usageReportSchema>;
export type AdminUsageReportView = FromSchema<typeof adminUsageReportSchema>;
