/**
 * Bodies of the admin key routes (`/v1/admin/keys`). Written once here;
 * `schemas/*.json` is emitted from these and the route validates against
 * the same objects, so the published contract is the enforced one.
 */
import type { FromSchema } from 'json-schema-to-ts';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

/** Six decimals always: the text is the exact micro-dollar amount. */
export const USD_PATTERN = '^[0-9]+\\.[0-9]{6}$';

const nameField = { type: 'string', minLength: 1, maxLength: 200, description: 'A label for people; not unique.' } as const;
const roleField = {
  type: 'string',
  enum: ['user', 'admin'],
  description: '`admin` keys may use the /v1/admin routes; `user` keys may not.',
} as const;

/**
 * A number or a string because JSON numbers pass through floats in most
 * clients; a decimal string is the way to send an amount that must arrive
 * exactly. Exactness (at most 6 decimals, plain decimal notation) is checked
 * by the route with parseUsd, which can say precisely what is wrong.
 */
const budgetField = {
  type: ['number', 'string', 'null'],
  minimum: 0,
  maxLength: 32,
  description:
    'Lifetime spending limit in USD: a JSON number (12.5) or a decimal string ("12.500000"), not negative, at most 6 decimal places. ' +
    'null means no limit. Requests that could take the key past it are refused with 429 insufficient_quota.',
} as const;

const rpmField = {
  type: ['integer', 'null'],
  minimum: 1,
  maximum: 1_000_000,
  description: 'Image requests per minute this key may make; null means the service default (DEFAULT_RPM_LIMIT).',
} as const;

export const createKeyRequestSchema = {
  $schema: DRAFT_07,
  title: 'Create API key request',
  description: 'Body of POST /v1/admin/keys. Unknown fields are refused.',
  type: 'object',
  properties: { name: nameField, budget_usd: budgetField, rpm_limit: rpmField, role: roleField },
  required: ['name'],
  additionalProperties: false,
} as const;

export const updateKeyRequestSchema = {
  $schema: DRAFT_07,
  title: 'Update API key request',
  description: 'Body of PATCH /v1/admin/keys/{id}: only the fields sent change. Unknown fields are refused.',
  type: 'object',
  properties: {
    name: nameField,
    enabled: { type: 'boolean', description: 'false refuses the key within 5 seconds on every process; true enables it again.' },
    budget_usd: budgetField,
    rpm_limit: rpmField,
    role: roleField,
  },
  additionalProperties: false,
} as const;

/** The `{id}` of `/v1/admin/keys/{id}`, checked like a body; not published (openapi.yaml lists the parameter). */
export const keyPathSchema = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1 } },
  required: ['id'],
  additionalProperties: false,
} as const;

const usdAmount = (description: string) => ({ type: 'string', pattern: USD_PATTERN, description }) as const;

const keyProperties = {
  id: { type: 'string', description: 'Stable id; usage rows and exports carry it as key_id.' },
  kind: {
    type: 'string',
    enum: ['issued', 'static'],
    description: '`static`: a key configured in the environment (API_KEYS, ADMIN_API_KEY); read-only here.',
  },
  name: { type: 'string' },
  role: { type: 'string', enum: ['user', 'admin'] },
  enabled: { type: 'boolean' },
  budget_usd: { type: ['string', 'null'], pattern: USD_PATTERN, description: 'Lifetime budget in USD, or null for none.' },
  spent_usd: usdAmount('Settled charges so far.'),
  reserved_usd: usdAmount('Held by requests in flight (their maximum charge until they settle).'),
  rpm_limit: { type: ['integer', 'null'], minimum: 0 },
  created_at: { type: 'string', description: 'ISO 8601, UTC.' },
  updated_at: { type: 'string', description: 'ISO 8601, UTC.' },
} as const;

const keyRequired = [
  'id',
  'kind',
  'name',
  'role',
  'enabled',
  'budget_usd',
  'spent_usd',
  'reserved_usd',
  'rpm_limit',
  'created_at',
  'updated_at',
] as const;

const keyObject = {
  type: 'object',
  properties: keyProperties,
  required: keyRequired,
  additionalProperties: false,
} as const;

export const apiKeySchema = {
  $schema: DRAFT_07,
  title: 'API key',
  description: 'An API key as the admin routes show it. Neither the key nor its hash is ever shown again after creation.',
  ...keyObject,
} as const;

export const createdApiKeySchema = {
  $schema: DRAFT_07,
  title: 'Created API key',
  description: 'The answer to POST /v1/admin/keys: the key record plus the key itself, shown this once only.',
  type: 'object',
  properties: {
    ...keyProperties,
    key: { type: 'string', description: 'The secret to send as "Authorization: Bearer <key>". Only its SHA-256 is stored.' },
  },
  required: [...keyRequired, 'key'],
  additionalProperties: false,
} as const;

export const apiKeyListSchema = {
  $schema: DRAFT_07,
  title: 'API key list',
  description: 'The answer to GET /v1/admin/keys, oldest first.',
  type: 'object',
  properties: {
    object: { type: 'string', const: 'list' },
    data: { type: 'array', items: keyObject },
  },
  required: ['object', 'data'],
  additionalProperties: false,
} as const;

export type CreateKeyRequest = FromSchema<typeof createKeyRequestSchema>;
export type UpdateKeyRequest = FromSchema<typeof updateKeyRequestSchema>;
export type KeyPath = FromSchema<typeof keyPathSchema>;
export type ApiKeyView = FromSchema<typeof apiKeySchema>;
export type CreatedApiKeyView = FromSchema<typeof createdApiKeySchema>;
export type ApiKeyList = FromSchema<typeof apiKeyListSchema>;
