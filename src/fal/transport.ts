import { createRedirectFetch, type FetchLike } from './redirect-fetch.js';
import { FollowingSignal, type AbortLike } from '../abort-like.js';
import { extractInlineImages, type InlineExtraction } from './inline-images.js';

/**
 * The `fetch` every fal call goes through: the one we hand to
 * `@fal-ai/client`, and the one the gateway sends its own submits and status
 * polls with. It owns four things the client cannot do for us:
 *
 * 1. Redirection to a fal-protocol server (`FAL_BASE_URL`), see redirect-fetch.
 * 2. Capturing response headers (`x-fal-request-id`, `x-fal-billable-units`,
 *    `retry-after`) for the call in progress. Calls are told apart by the
 *    abort signal the client passes on to fetch: each call gets a signal of
 *    its own (see `run`), so no header ever lands on the wrong job. A status
 *    stream's fetch carries the client's internal signal instead, so it is
 *    known by its job's id in the URL; a storage upload carries none, so
 *    uploads take turns. (AsyncLocalStorage did this before, but once used it
 *    makes Node tag every promise in the process with async ids: memory for
 *    each of the thousands a waiting job holds, and CPU on every request.)
 * 3. Retries, in exactly one layer. The client retries submit/result 3× and
 *    status 5× with second-scale backoff that ignores `retry-after`, and a
 *    retried submit can create a second billable job. So we retry here, with
 *    per-phase rules, and then hide retryable outcomes from the client: a
 *    retryable status reaches it as 599 (in no retry list) and a network error
 *    as a plain Error (no retryable shape). The gateway reads the real status
 *    from the capture.
 * 4. Result bodies: read here as the chunks they arrive in, with sync_mode
 *    images cut out as Buffers into the capture before the client parses the
 *    rest (inline-images.ts), so a 10 MB data URI never becomes a string.
 */

export type FalPhase = 'submit' | 'status' | 'stream' | 'result' | 'cancel' | 'run' | 'storage' | 'other';

export interface CallCapture {
  phase: FalPhase;
  /** Aborts retries and in-flight attempts (deadline or caller gone). */
  signal?: AbortSignal;
  /** Filled in by the transport. */
  status?: number;
  headers?: Headers;
  falRequestId?: string;
  /** Every fal request id seen on any attempt (a refused submit may still have made a job). */
  seenIds: string[];
  billableUnits?: string;
  retryAfterS?: number;
  attempts: number;
  /** The last transport failure when no response came back. */
  networkError?: Error;
  /** True when the last submit attempt may have reached fal without an answer. */
  ambiguous?: boolean;
  /** A result's data URI payloads, cut out of the body before the client parsed it (see inline-images.ts). */
  inline?: InlineExtraction;
}

/** Status we give the client for an outcome we already retried. */
export const HIDDEN_RETRYABLE_STATUS = 599;

export class FalTransportError extends Error {
  constructor(message: string, readonly causeError: unknown) {
    super(message);
    this.name = 'FalTransportError';
  }
}

export interface RetryPolicy {
  /** Attempts in total, including the first. */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface TransportOptions {
  baseUrl?: string;
  fetchImpl?: FetchLike;
  /**
   * A fetch per phase, so long-lived status streams and short calls can use
   * separate connection pools (a stream holds its connection for minutes).
   */
  fetchFor?: (phase: FalPhase) => FetchLike | undefined;
  retry?: Partial<Record<FalPhase, RetryPolicy>>;
  /** Longest `retry-after` we are willing to wait inside one request. */
  maxRetryAfterMs?: number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

const DEFAULT_RETRY: Record<FalPhase, RetryPolicy> = {
  // A submit that may have reached fal is never resent (see shouldRetry).
  submit: { attempts: 3, baseDelayMs: 200, maxDelayMs: 2000 },
  status: { attempts: 4, baseDelayMs: 100, maxDelayMs: 1000 },
  stream: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 },
  result: { attempts: 4, baseDelayMs: 100, maxDelayMs: 1000 },
  cancel: { attempts: 2, baseDelayMs: 100, maxDelayMs: 500 },
  run: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 },
  storage: { attempts: 3, baseDelayMs: 200, maxDelayMs: 2000 },
  other: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 },
};

const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504]);

/** Network failures where the request certainly never reached the server. */
function neverSent(err: unknown): boolean {
  let cur: unknown = err;
  for (let i = 0; i < 5 && cur && typeof cur === 'object'; i++) {
    const code = (cur as { code?: unknown }).code;
    if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'UND_ERR_CONNECT_TIMEOUT') return true;
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}

function parseRetryAfter(h: Headers): number | undefined {
  const ms = h.get('retry-after-ms');
  if (ms && /^\d+(\.\d+)?$/.test(ms)) return Number(ms) / 1000;
  const s = h.get('retry-after');
  if (!s) return undefined;
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const when = Date.parse(s);
  return Number.isNaN(when) ? undefined : Math.max(0, (when - Date.now()) / 1000);
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export interface FalTransport {
  fetch: FetchLike;
  /**
   * Runs `fn` with a fresh capture for the fal call(s) it makes. Every fetch
   * of the call must carry `signal` (the one given to `fn`: it follows the
   * caller's), except a status stream's, named by `streamOf` (the job's id),
   * and a storage upload's.
   */
  run<T>(phase: FalPhase, signal: AbortLike | undefined, fn: (capture: CallCapture, signal: AbortSignal) => Promise<T>, streamOf?: string): Promise<T>;
}

/** The job id in a status stream's URL (`…/requests/{id}/status/stream`). */
const STREAM_URL = /\/requests\/([^/?#]+)\/status\/stream(?:[?#]|$)/;

function urlOf(input: Parameters<FetchLike>[0]): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : (input as Request).url;
}

export function createFalTransport(opts: TransportOptions = {}): FalTransport {
  // The calls in progress, by the signal their fetches carry, and status streams by job id.
  const bySignal = new WeakMap<AbortSignal, CallCapture>();
  const streams = new Map<string, CallCapture>();
  // Storage uploads take turns: their fetches carry no signal of ours.
  let storageCall: CallCapture | undefined;
  let storageTurn: Promise<unknown> = Promise.resolve();
  const captureOf = (input: Parameters<FetchLike>[0], init: Parameters<FetchLike>[1]): CallCapture | undefined => {
    const s = init?.signal;
    const bySig = s ? bySignal.get(s) : undefined;
    if (bySig) return bySig;
    if (streams.size > 0) {
      const id = STREAM_URL.exec(urlOf(input))?.[1];
      const c = id === undefined ? undefined : streams.get(decodeURIComponent(id));
      if (c) return c;
    }
    return storageCall;
  };
  const inner = createRedirectFetch({ baseUrl: opts.baseUrl, fetchImpl: opts.fetchImpl });
  const perPhase = new Map<FalPhase, FetchLike>();
  const innerFor = (phase: FalPhase): FetchLike => {
    if (!opts.fetchFor) return inner;
    let f = perPhase.get(phase);
    if (!f) {
      const impl = opts.fetchFor(phase);
      f = impl ? createRedirectFetch({ baseUrl: opts.baseUrl, fetchImpl: impl }) : inner;
      perPhase.set(phase, f);
    }
    return f;
  };
  const policies = { ...DEFAULT_RETRY, ...(opts.retry ?? {}) };
  const maxRetryAfterMs = opts.maxRetryAfterMs ?? 5000;
  const pause = opts.sleep ?? sleep;

  const wrapped: FetchLike = async (input, init) => {
    const capture = captureOf(input, init);
    if (!capture) return inner(input, init);
    const policy = policies[capture.phase];
    // The client passes on the very signal the gateway gave it, so the two are
    // usually one: composing a signal with itself would only add, per attempt,
    // a composite that Node 20 keeps referenced from the job's signal until
    // the job ends.
    const outer = init?.signal ?? undefined;
    const signal = outer && capture.signal && outer !== capture.signal ? AbortSignal.any([outer, capture.signal]) : (outer ?? capture.signal);

    for (let attempt = 1; ; attempt++) {
      capture.attempts++;
      let res: Response;
      try {
        res = await innerFor(capture.phase)(input, { ...init, signal });
      } catch (err) {
        capture.networkError = err as Error;
        capture.status = undefined;
        const aborted = signal?.aborted ?? false;
        // A submit whose connection failed after sending may have created a
        // job; resending could bill twice, so only a refused connection is safe.
        const safe = capture.phase !== 'submit' || neverSent(err);
        capture.ambiguous = capture.phase === 'submit' && !neverSent(err);
        if (!aborted && safe && attempt < policy.attempts) {
          await pause(backoff(policy, attempt), signal);
          if (!signal?.aborted) continue;
        }
        if (signal?.aborted) throw err; // an AbortError is not retried by the client either
        throw new FalTransportError(`fal ${capture.phase} failed: ${(err as Error).message}`, err);
      }

      capture.status = res.status;
      capture.headers = res.headers;
      capture.networkError = undefined;
      capture.ambiguous = false;
      const fid = res.headers.get('x-fal-request-id');
      if (fid) {
        capture.falRequestId = fid;
        if (!capture.seenIds.includes(fid)) capture.seenIds.push(fid);
      }
      const units = res.headers.get('x-fal-billable-units');
      if (units !== null) capture.billableUnits = units;
      capture.retryAfterS = parseRetryAfter(res.headers);

      if (capture.phase === 'stream' && res.ok && !(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
        // The client's non-SSE branch reads chunks with no rejection handler, so
        // a reset mid-body would surface as an unhandled rejection. Refuse it here.
        await res.body?.cancel().catch(() => {});
        return new Response(null, { status: HIDDEN_RETRYABLE_STATUS, statusText: 'status stream is not text/event-stream', headers: res.headers });
      }
      if (capture.phase === 'result' && res.ok && res.body && (res.headers.get('content-type') ?? '').includes('application/json')) {
        let chunks: Buffer[];
        try {
          chunks = await readChunks(res.body);
        } catch (err) {
          // The body broke off. Reading a result changes nothing at fal, so it is asked again.
          capture.networkError = err as Error;
          capture.status = undefined;
          if (!signal?.aborted && attempt < policy.attempts) {
            await pause(backoff(policy, attempt), signal);
            if (!signal?.aborted) continue;
          }
          if (signal?.aborted) throw err;
          throw new FalTransportError(`fal result body failed: ${(err as Error).message}`, err);
        }
        return withInlineImagesCut(res, chunks, capture);
      }
      if (!RETRYABLE_STATUS.has(res.status)) return res;

      // 429 and 503 are refusals: the job was not created, so even a submit
      // may be resent. A 500/502/504 on submit is ambiguous.
      const resendable = capture.phase !== 'submit' || res.status === 429 || res.status === 503;
      const waitMs = capture.retryAfterS !== undefined ? capture.retryAfterS * 1000 : backoff(policy, attempt);
      if (resendable && attempt < policy.attempts && waitMs <= maxRetryAfterMs && !signal?.aborted) {
        await res.body?.cancel().catch(() => {});
        await pause(waitMs, signal);
        if (!signal?.aborted) continue;
      }
      return new Response(res.body, { status: HIDDEN_RETRYABLE_STATUS, statusText: `upstream ${res.status}`, headers: res.headers });
    }
  };

  return {
    fetch: wrapped,
    async run(phase, signal, fn, streamOf) {
      const own = new FollowingSignal(signal);
      const capture: CallCapture = { phase, signal: own.controller.signal, attempts: 0, seenIds: [] };
      bySignal.set(own.controller.signal, capture);
      if (streamOf !== undefined) streams.set(streamOf, capture);
      let turn: (() => void) | undefined;
      try {
        if (phase === 'storage') {
          const previous = storageTurn;
          storageTurn = new Promise<void>((r) => (turn = r));
          await previous;
          storageCall = capture;
        }
        return await fn(capture, own.controller.signal);
      } finally {
        own.detach();
        bySignal.delete(own.controller.signal);
        if (streamOf !== undefined && streams.get(streamOf) === capture) streams.delete(streamOf);
        if (turn) {
          storageCall = undefined;
          turn();
        }
      }
    },
  };
}

/** The body as the chunks it arrived in: they are kept, never joined (the images are views of them). */
async function readChunks(body: ReadableStream<Uint8Array>): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
  return chunks;
}

/**
 * The response the client parses: the result body with each data URI payload
 * replaced by a placeholder (the payloads go to the capture), or the body as
 * it was when there is none.
 */
function withInlineImagesCut(res: Response, chunks: Buffer[], capture: CallCapture): Response {
  const found = extractInlineImages(chunks);
  if (found) capture.inline = found;
  const headers = new Headers(res.headers);
  // The new body is neither the length fal sent nor compressed.
  headers.delete('content-length');
  headers.delete('content-encoding');
  const body = found ? found.json : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  return new Response(body, { status: res.status, statusText: res.statusText, headers });
}

function backoff(p: RetryPolicy, attempt: number): number {
  const base = Math.min(p.baseDelayMs * 2 ** (attempt - 1), p.maxDelayMs);
  // Jitter spreads retries from many waiting jobs so they do not arrive together.
  return Math.round(base * (0.75 + Math.random() * 0.5));
}
