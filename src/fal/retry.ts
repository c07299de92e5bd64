import type { FalPhase } from './errors.js';

/**
 * When a fal call is tried again, and after how long: pure decisions, no I/O.
 *
 * Retries happen in exactly one layer, ours (src/fal/fal-call.ts asks this
 * module after every attempt). `@fal-ai/client` is told `maxRetries: 0`,
 * which holds for the calls that take the client's default policy (cancel,
 * status stream, storage). For status, result and submit the client imposes
 * its own queue policy whatever it is told (1 s to 60 s backoff, no
 * `retry-after`, 3 to 5 tries), so it must never see an outcome it would
 * retry: our fetch retries it here, and when this module says stop, the call
 * ends inside our fetch with a `FalCallError`, which the client passes on
 * untouched (it retries only its own ApiError with a listed status, and
 * errors whose cause chain is a network failure).
 *
 * The rules, per phase:
 * - submit: only an outcome that proves fal made no job is sent again
 *   (`provesNoJob`); anything else could bill twice (src/fal/submit-once.ts).
 * - every other phase: 429, 500, 502, 503 and 504 answers and network failures,
 *   a result whose body broke off included. Reading a status, a result or
 *   the request listing changes nothing at fal, and a repeated cancel is the
 *   same cancel.
 * - the wait is `retry-after` when fal sends one, else exponential backoff
 *   with ±25 % jitter (so many waiting jobs do not retry in step); a wait
 *   longer than the cap is not waited: the caller gets fal's answer, with
 *   its `retry-after`, to pass on.
 */

export interface RetryPolicy {
  /** Attempts in total, including the first. */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: Readonly<Record<FalPhase, RetryPolicy>> = {
  submit: { attempts: 3, baseDelayMs: 200, maxDelayMs: 2000 },
  status: { attempts: 4, baseDelayMs: 100, maxDelayMs: 1000 },
  // A status stream that fails falls back to polling, which has its own retries.
  stream: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 },
  result: { attempts: 4, baseDelayMs: 100, maxDelayMs: 1000 },
  cancel: { attempts: 2, baseDelayMs: 100, maxDelayMs: 500 },
  storage: { attempts: 3, baseDelayMs: 200, maxDelayMs: 2000 },
  // fal's request listing (Platform API): a read, and a failed one is tried again next reconciliation round.
  listing: { attempts: 4, baseDelayMs: 200, maxDelayMs: 2000 },
  other: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 },
};

/** The longest `retry-after` waited inside one call, by default. */
export const DEFAULT_MAX_RETRY_AFTER_MS = 5000;

/** What one attempt came to. */
export type Outcome =
  /** fal answered with this status (and maybe a `retry-after`, in seconds). */
  | { status: number; retryAfterS?: number | undefined }
  /**
   * No whole answer: the connection was never made (`never_sent`), failed
   * after the request may have gone out (`after_sending`), or the answer's
   * body broke off (`body_broken`).
   */
  | { failed: 'never_sent' | 'after_sending' | 'body_broken' };

export type Decision = { retry: false } | { retry: true; delayMs: number };

/**
 * Answers that mean fal refused the request before taking it (REFERENCE §3:
 * rate limit, unavailable). An `x-fal-request-id` on such an answer is not
 * proof that a job exists (REFERENCE §3b), so it does not change this; the
 * id is still reported (`strayIds`), as the rare job made anyway may bill.
 */
const REFUSED = new Set([429, 503]);

/** Answers worth asking again for calls that change nothing at fal. */
const TRANSIENT = new Set([429, 500, 502, 503, 504]);

/** A submit outcome after which fal certainly made no job, so sending it again cannot make a second. */
export function provesNoJob(o: Outcome): boolean {
  return 'status' in o ? REFUSED.has(o.status) : o.failed === 'never_sent';
}

/** Whether the outcome is worth another attempt in this phase, budget aside. */
export function retryable(phase: FalPhase, o: Outcome): boolean {
  if (phase === 'submit') return provesNoJob(o);
  return 'status' in o ? TRANSIENT.has(o.status) : true;
}

/** The exponential backoff before attempt `attempt + 1`, with ±25 % jitter; `random` in [0, 1). */
export function backoffMs(policy: RetryPolicy, attempt: number, random: number): number {
  const base = Math.min(policy.baseDelayMs * 2 ** (attempt - 1), policy.maxDelayMs);
  return Math.round(base * (0.75 + random * 0.5));
}

/** After attempt number `attempt` (from 1) came to `o`: try again, and when? */
export function decide(phase: FalPhase, policy: RetryPolicy, attempt: number, o: Outcome, maxRetryAfterMs: number, random: number = Math.random()): Decision {
  if (attempt >= policy.attempts || !retryable(phase, o)) return { retry: false };
  const retryAfterS = 'status' in o ? o.retryAfterS : undefined;
  const delayMs = retryAfterS !== undefined ? retryAfterS * 1000 : backoffMs(policy, attempt, random);
  return delayMs <= maxRetryAfterMs ? { retry: true, delayMs } : { retry: false };
}

/** `retry-after-ms`, else `retry-after` (seconds or an HTTP date), in seconds. */
export function parseRetryAfter(get: (name: string) => string | null, now: number = Date.now()): number | undefined {
  const ms = get('retry-after-ms');
  if (ms && /^\d+(\.\d+)?$/.test(ms)) return Number(ms) / 1000;
  const s = get('retry-after');
  if (!s) return undefined;
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const when = Date.parse(s);
  return Number.isNaN(when) ? undefined : Math.max(0, (when - now) / 1000);
}

/** Connection failures where the request certainly never reached the server. */
const NEVER_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);

/** Whether a fetch failure (or one in its cause chain) happened before any byte of the request left. */
export function neverSent(err: unknown): boolean {
  let cur: unknown = err;
  for (let i = 0; i < 5 && cur && typeof cur === 'object'; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && NEVER_SENT_CODES.has(code)) return true;
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}
