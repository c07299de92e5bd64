import { createHash } from 'node:crypto';
import type { RequestHandler } from 'express';
import { AnswerWithheld, ApiError, errorResponse, invalidRequest } from '../errors.js';
import type { GenerateOutcome } from '../images/generate.js';
import type { CanonicalRequest } from '../images/normalize.js';
import type { AnswerRecovery, Recovered } from '../images/recover-answer.js';
import type { IdempotencyStore, RunningClaim } from '../metering/idempotency-store.js';
import type { Charge } from '../metering/pricing.js';
import type { RequestLocals } from './waiting-requests.js';

/**
 * `Idempotency-Key`, scoped per API key. A repeat with an equal body gets the
 * stored answer (no new fal job, no new charge); a repeat while the first is
 * still running on a live process waits for it, then gets 409 with
 * `retry-after`; a different body is a 422. Failures before anything was
 * sent to fal (validation, budget) are not stored, so a corrected retry can
 * reuse the key; errors after a job was submitted are, because a fresh
 * attempt would start (and bill) another job. When no live process will
 * answer (its process died, or its caller left first), the request's ledger
 * row answers a repeat (src/images/recover-answer.ts), reconciled at once if
 * its process is dead.
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
  /** This process's lease: its claims name it, so a repeat can tell when the process died. */
  leaseId?: string | undefined;
  /** Answers a repeat from the ledger when no live process will (the route binds it to the request: `IdempotencyScope.recover`). */
  recovery?: AnswerRecovery | undefined;
  /** Told when an answer could not be stored; the answer is still sent (see `store`). */
  logger?: { warn(obj: object, msg: string): void } | undefined;
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

/**
 * The image routes' `Idempotency-Key` header, checked before the body is
 * (a malformed key is refused whatever the body says) and kept on the
 * request's locals for the answer.
 */
export const idempotencyKeyHeader: RequestHandler = (req, res, next) => {
  (res.locals as RequestLocals).idempotencyKey = parseIdempotencyKey(req.get('idempotency-key'));
  next();
};

/** What an image route hands over for an answer under an Idempotency-Key (`replays`). */
export interface ReplayScope {
  keyId: string;
  idemKey: string;
  requestId: string;
  /** What a repeat's body must equal. */
  body: unknown;
  /** The caller's response: once destroyed, an error is not stored (see `IdempotencyScope.callerGone`). */
  caller: { readonly destroyed: boolean };
  /** The request, for answering a repeat from its ledger row. */
  request: CanonicalRequest;
  publicBaseUrl: string;
  /** The retry's own caller leaving ends its wait. */
  signal?: AbortSignal | undefined;
}

/**
 * The image routes' answers under an Idempotency-Key: `withIdempotency`
 * bound to the options and to the headers of a 200 answer, each repeat
 * recovered from the ledger through `opts.recovery`.
 */
export function replays(opts: IdempotencyOptions, okHeaders: (outcome: GenerateOutcome) => Record<string, string>) {
  return {
    answer(s: ReplayScope, work: (run: IdempotentRun) => Promise<Reply>): Promise<Reply> {
      const recovery = opts.recovery;
      return withIdempotency(
        opts,
        {
          keyId: s.keyId,
          idemKey: s.idemKey,
          requestId: s.requestId,
          body: s.body,
          callerGone: () => s.caller.destroyed,
          recover: recovery && ((claim) => recovery.recover(claim, s.request, s.publicBaseUrl)),
          okHeaders,
          signal: s.signal,
        },
        work,
      );
    },
  };
}

export interface IdempotentRun {
  /** Set by the work once a fal job may exist: from then on errors are stored too. */
  submitted: boolean;
}

export interface IdempotencyScope {
  keyId: string;
  idemKey: string;
  requestId: string;
  body: unknown;
  /**
   * Whether the caller has left. An error is then never stored (nobody saw
   * it, and the request may yet be charged for images that complete): the
   * claim is detached, and its request's ledger row answers a retry.
   */
  callerGone?: () => boolean;
  /** What became of a claim no live process will answer (src/images/recover-answer.ts); absent, a retry only waits. */
  recover?: (claim: RunningClaim) => Promise<Recovered>;
  /** The headers of a 200 answer, for one `recover` rebuilt. */
  okHeaders?: (outcome: GenerateOutcome) => Record<string, string>;
  /** The retry's own caller leaving ends its wait. */
  signal?: AbortSignal;
}

export async function withIdempotency(opts: IdempotencyOptions, scope: IdempotencyScope, work: (run: IdempotentRun) => Promise<Reply>): Promise<Reply> {
  const claimed = await claim(opts, scope);
  if (claimed !== 'new') return claimed;
  const key = { keyId: scope.keyId, idemKey: scope.idemKey, requestId: scope.requestId };
  const run: IdempotentRun = { submitted: false };
  let reply: Reply;
  try {
    reply = await work(run);
  } catch (err) {
    if (!run.submitted) {
      await opts.store.abandon(key);
      throw err;
    }
    // No answer will be written here (the caller left, or the request's new
    // owner bills it as unanswered): a retry reads what the ledger says.
    if (scope.callerGone?.() || err instanceof AnswerWithheld) {
      await opts.store.detach(key);
      throw err;
    }
    const e = errorResponse(err);
    reply = { status: e.status, headers: e.headers, body: e.body };
  }
  await store(opts, { ...key, statusCode: reply.status, response: { headers: reply.headers, body: reply.body } });
  return reply;
}

/**
 * Stores a finished answer for repeats. Failing to store it never replaces
 * the answer: by now the request may be charged, and an error would invite
 * a retry. The claim stays open, so a repeat is answered from the request's
 * ledger row (`claim`), charged once.
 */
async function store(opts: IdempotencyOptions, done: Parameters<IdempotencyStore['complete']>[0]): Promise<void> {
  try {
    await opts.store.complete(done);
  } catch (err) {
    opts.logger?.warn({ err, requestId: done.requestId, status: done.statusCode }, 'idempotency: the answer was sent but not stored; a repeat is answered from the ledger');
  }
}

/**
 * Claims the key ('new'), or answers for the request that holds it: its
 * stored answer, or what its ledger row says once no live process will
 * answer (stored then, when final). Waits while it runs, up to `waitMs`.
 */
async function claim(opts: IdempotencyOptions, scope: IdempotencyScope): Promise<Reply | 'new'> {
  const hash = bodyHash(scope.body);
  const deadline = Date.now() + opts.waitMs;
  for (;;) {
    const state = await opts.store.begin({ keyId: scope.keyId, idemKey: scope.idemKey, bodyHash: hash, requestId: scope.requestId, ttlS: opts.ttlS, leaseId: opts.leaseId });
    if (state.state === 'mismatch') {
      throw new ApiError(422, 'This Idempotency-Key was already used with a different request body.', {
        type: 'invalid_request_error',
        code: 'idempotency_key_reused',
        param: 'Idempotency-Key',
      });
    }
    if (state.state === 'done') {
      const stored = state.response as { headers?: Record<string, string>; body?: unknown };
      return replayed({ status: state.statusCode, headers: stored.headers ?? {}, body: stored.body });
    }
    if (state.state === 'new') return 'new';
    const found = scope.recover ? await scope.recover({ requestId: state.requestId, leaseId: state.leaseId }) : undefined;
    if (found?.state === 'not_started') {
      // Nothing was reserved or sent under the dead claim: this request does the work.
      if (await opts.store.takeOver({ keyId: scope.keyId, idemKey: scope.idemKey, fromRequestId: state.requestId, requestId: scope.requestId, leaseId: opts.leaseId, ttlS: opts.ttlS })) return 'new';
      continue;
    }
    if (found && found.state !== 'in_progress') {
      const { reply, final } = recoveredReply(found, scope.okHeaders);
      if (final) await store(opts, { keyId: scope.keyId, idemKey: scope.idemKey, requestId: state.requestId, statusCode: reply.status, response: { headers: reply.headers, body: reply.body } });
      return replayed(reply);
    }
    if (Date.now() > deadline || scope.signal?.aborted) {
      throw new ApiError(409, 'A request with this Idempotency-Key is still in progress.', {
        type: 'conflict_error',
        code: 'idempotency_key_in_progress',
        param: 'Idempotency-Key',
        retryAfterS: 1,
      });
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 250));
  }
}

function replayed(reply: Reply): Reply {
  return { ...reply, headers: { ...reply.headers, 'idempotent-replayed': 'true' } };
}

/**
 * The answer for a request no process answered, from its ledger row; `final`
 * answers are stored under the key. None invites a retry that could bill:
 * the key stays bound to the request.
 */
function recoveredReply(found: Exclude<Recovered, { state: 'in_progress' | 'not_started' }>, okHeaders: IdempotencyScope['okHeaders']): { reply: Reply; final: boolean } {
  if (found.state === 'charged') return { reply: { status: 200, headers: okHeaders?.(found.outcome) ?? {}, body: found.outcome.body }, final: true };
  const usage = (charge: Charge) => ({ 'x-usage-cost-usd': charge.usd, 'x-usage-credits': String(charge.credits) });
  let err: ApiError;
  if (found.state === 'charged_unreadable' && !found.final) {
    err = new ApiError(503, `The request under this Idempotency-Key completed and was charged $${found.charge.usd}, but its images cannot be fetched from the image provider right now. Retry with the same Idempotency-Key: it is not charged again.`, {
      type: 'service_unavailable',
      code: 'idempotent_result_unavailable',
      retryAfterS: 5,
      headers: usage(found.charge),
    });
  } else if (found.state === 'charged_unreadable') {
    err = new ApiError(502, `The request under this Idempotency-Key completed and was charged $${found.charge.usd}, but its answer was never stored and the image provider no longer holds its images. A retry with this key returns this answer and is not charged again.`, {
      type: 'upstream_error',
      code: 'idempotent_result_gone',
      shouldRetry: false,
      headers: usage(found.charge),
    });
  } else {
    err = new ApiError(502, 'The request under this Idempotency-Key ended without images before it was answered, and was not charged. A retry with this key returns this answer; send a new Idempotency-Key to try again.', {
      type: 'upstream_error',
      code: 'idempotent_request_failed',
      shouldRetry: false,
    });
  }
  const e = errorResponse(err);
  return { reply: { status: e.status, headers: e.headers, body: e.body }, final: found.state === 'closed' || found.final };
}
