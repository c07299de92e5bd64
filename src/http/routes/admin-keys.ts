import { Router, type Request, type Response } from 'express';
import { ApiError, invalidRequest, notFound } from '../../errors.js';
import type { KeyPatch, KeyRecord, KeysStore } from '../../metering/keys-store.js';
import { MoneyError, parseUsd } from '../../metering/money.js';
import { keyView } from '../../metering/views.js';
import {
  createKeyRequestSchema,
  keyPathSchema,
  updateKeyRequestSchema,
  type CreateKeyRequest,
  type KeyPath,
  type UpdateKeyRequest,
} from '../../schemas/index.js';
import { storageBacked } from '../storage-errors.js';
import { jsonBody } from '../body.js';
import { bodyValidator, pathValidator } from '../validate.js';

export interface AdminKeysRouteDeps {
  keys: KeysStore;
  maxBodyBytes: number;
}

const validateCreate = bodyValidator<CreateKeyRequest>(createKeyRequestSchema);
const validateUpdate = bodyValidator<UpdateKeyRequest>(updateKeyRequestSchema);
const validatePath = pathValidator<KeyPath>(keyPathSchema);

/** The schema let a number or a string through; this is where "exactly" is enforced. */
function budgetMicros(value: number | string | null): bigint | null {
  if (value === null) return null;
  try {
    return parseUsd(value);
  } catch (err) {
    if (err instanceof MoneyError) throw invalidRequest(err.message.replaceAll('a USD amount', 'budget_usd'), 'budget_usd');
    throw err;
  }
}

function keyNotFound(id: string): ApiError {
  return notFound(`No API key with id ${JSON.stringify(id.slice(0, 200))}.`, 'key_not_found', 'id');
}

/**
 * Keys from the environment authenticate from the environment: a disable
 * or role change stored here would be ignored (or undone at the next
 * start), so it is refused rather than accepted and silently without effect.
 */
function refuseStatic(k: KeyRecord): void {
  if (k.kind === 'static') {
    throw new ApiError(409, `The key ${k.id} is configured in the environment (API_KEYS or ADMIN_API_KEY); change it there.`, {
      type: 'conflict_error',
      code: 'static_key',
      param: 'id',
    });
  }
}

function idOf(req: Request): string {
  return validatePath(req.params).id;
}

function noStore(res: Response): Response {
  return res.set('cache-control', 'no-store');
}

/** `/v1/admin/keys`. Authentication and the admin check are mounted in front of it (app.ts). */
export function adminKeysRouter(deps: AdminKeysRouteDeps): Router {
  const router = Router();
  const body = jsonBody(deps.maxBodyBytes);

  router.post('/v1/admin/keys', ...body, storageBacked(async (req, res) => {
    const input = validateCreate(req.body);
    const { record, key } = await deps.keys.create({
      name: input.name,
      role: input.role,
      budgetMicros: input.budget_usd === undefined ? null : budgetMicros(input.budget_usd),
      rpmLimit: input.rpm_limit ?? null,
    });
    noStore(res).status(201).json({ ...keyView(record), key });
  }));

  router.get('/v1/admin/keys', storageBacked(async (_req, res) => {
    const all = await deps.keys.list();
    noStore(res).json({ object: 'list', data: all.map(keyView) });
  }));

  router.get('/v1/admin/keys/:id', storageBacked(async (req, res) => {
    const id = idOf(req);
    const k = await deps.keys.get(id);
    if (!k) throw keyNotFound(id);
    noStore(res).json(keyView(k));
  }));

  router.patch('/v1/admin/keys/:id', ...body, storageBacked(async (req, res) => {
    const id = idOf(req);
    const input = validateUpdate(req.body);
    const patch: KeyPatch = {
      name: input.name,
      enabled: input.enabled,
      role: input.role,
      budgetMicros: input.budget_usd === undefined ? undefined : budgetMicros(input.budget_usd),
      rpmLimit: input.rpm_limit,
    };
    const existing = await deps.keys.get(id);
    if (!existing) throw keyNotFound(id);
    if (Object.keys(input).length > 0) refuseStatic(existing);
    const updated = await deps.keys.update(existing.id, patch);
    if (!updated) throw keyNotFound(id);
    noStore(res).json(keyView(updated));
  }));

  router.delete('/v1/admin/keys/:id', storageBacked(async (req, res) => {
    const id = idOf(req);
    const existing = await deps.keys.get(id);
    if (!existing) throw keyNotFound(id);
    refuseStatic(existing);
    const disabled = await deps.keys.disable(existing.id);
    if (!disabled) throw keyNotFound(id);
    noStore(res).json(keyView(disabled));
  }));

  return router;
}
