import { createHash } from 'node:crypto';
import { ApiError, errorResponse, invalidRequest } from '../errors.js';
import type { IdempotencyStore } from '../metering/idempotency-store.js';

/**
 * `Idempotency-Key`, scoped per API key. A repeat with an equal body gets the
 * stored answer (no new fal job, no new charge); a repeat while the first is
 * still running waits for it; a different body is a 422. Failures before
 * anything was sent to fal (validation, budget) are not stored, so a corrected
 * retry can reuse the key; errors after a job was submitted are, because a
 * fresh attempt would start (and bill) another job.
 */

export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

export interface IdempotencyOptions {
  store: IdempotencyStore;
  ttlS: number;
  /** How long a repeat waits for the first request before giving up with a 409. */
  waitMs: number;
  pollMs?: number;
}

const KEY_SHAPE = /^[\x21-\x7e]{1,255}$/;

/** Key order and spacing do not make two bodies different. */
export function bodyHash(body: unknown): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

export function parseIdempotencyKey(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!KEY_SHAPE.test(raw)) throw invalidRequest('Idempotency-Key must be 1 to 255 printable ASCII characters.', 'Idempotency-Key', 'invalid_idempotency_key');
  return raw;
}

export interface IdempotentRun {
  /** Set by the work once a fal job may exist: from then on errors are stored too. */
  submitted: boolean;
}

export async function withIdempotency(
  opts: IdempotencyOptions,
  scope: { keyId: string; idemKey: string; requestId: string; body: unknown },
  work: (run: IdempotentRun) => Promise<Reply>,
): Promise<Reply> {
  const hash = bodyHash(scope.body);
  const begin = () => opts.store.begin({ keyId: scope.keyId, idemKey: scope.idemKey, bodyHash: hash, requestId: scope.requestId, ttlS: opts.ttlS });
  const deadline = Date.now() + opts.waitMs;
  for (;;) {
    const state = await begin();
    if (state.state === 'mismatch') {
      throw new ApiError(422, 'This Idempotency-Key was already used with a different request body.', {
        type: 'invalid_request_error',
        code: 'idempotency_key_reused',
        param: 'Idempotency-Key',
      });
    }
    if (state.state === 'done') {
      const stored = state.response as { headers?: Record<string, string>; body?: unknown };
      return { status: state.statusCode, headers: { ...(stored.headers ?? {}), 'idempotent-replayed': 'true' }, body: stored.body };
    }
    if (state.state === 'new') break;
    if (Date.now() > deadline) {
      throw new ApiError(409, 'A request with this Idempotency-Key is still in progress.', {
        type: 'conflict_error',
        code: 'idempotency_key_in_progress',
        param: 'Idempotency-Key',
        retryAfterS: 1,
      });
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 100));
  }

  const run: IdempotentRun = { submitted: false };
  let reply: Reply;
  try {
    reply = await work(run);
  } catch (err) {
    if (!run.submitted) {
      await opts.store.abandon({ keyId: scope.keyId, idemKey: scope.idemKey, requestId: scope.requestId });
      throw err;
    }
    const e = errorResponse(err);
    reply = { status: e.status, headers: e.headers, body: e.body };
  }
  await opts.store.complete({
    keyId: scope.keyId,
    idemKey: scope.idemKey,
    requestId: scope.requestId,
    statusCode: reply.status,
    response: { headers: reply.headers, body: reply.body },
  });
  return reply;
}
