import { createFalClient, ApiError, type FalClient } from '@fal-ai/client';
import type { FetchLike } from './redirect-fetch.js';
import { FalCallError, type FalCallErrorInit, type FalPhase } from './errors.js';
import { decide, neverSent, parseRetryAfter, type Outcome, type RetryPolicy } from './retry.js';
import { extractInlineImages, type InlineExtraction } from './inline-images.js';

/**
 * One fal call (a status poll, a result, a submit, an upload...), and the
 * `fetch` that `@fal-ai/client` makes it with. Each call gets a client of its
 * own (`clientFor`), built around this call's `fetch`, so every header fal
 * answers lands on the call that asked, with no lookup: a client is small
 * and quick to build next to the call it serves, and lives as long as its
 * call.
 *
 * What the call's fetch does that the client cannot:
 * 1. Reads fal's headers (`x-fal-request-id`, `x-fal-billable-units`,
 *    `retry-after`), here and nowhere else.
 * 2. Retries, by src/fal/retry.ts, in the one retry layer. An answer the
 *    client would retry itself (429, 5xx) or a network failure never reaches
 *    it: either we try again, or the call ends here with a `FalCallError`.
 *    A call makes one client request: a second fetch from the client for the
 *    same queue call could only be its own retry, and is refused unsent.
 * 3. Result bodies: read as the chunks they arrive in, with sync_mode images
 *    cut out as Buffers into this call (inline-images.ts) before the client
 *    parses the rest, so a 10 MB data URI never becomes a string.
 * 4. A status stream answered with something else than an event stream
 *    ends the call (the client would read it with no error handler).
 *
 * Aborts: the call runs under a signal of its own that follows the caller's
 * while the call lasts, so whatever a fetch hangs on it goes with the call,
 * not with a job's signal that may live for minutes.
 */

export interface CallSettings {
  /** The fetch for this phase, already pointed at fal or at `FAL_BASE_URL`. */
  fetch: FetchLike;
  policy: RetryPolicy;
  maxRetryAfterMs: number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/** Queue calls that are one client request each (a stream and an upload make their own). */
const ONE_REQUEST: ReadonlySet<FalPhase> = new Set<FalPhase>(['submit', 'status', 'result', 'cancel']);

export class FalCall {
  /** What fal answered last. */
  status: number | undefined;
  falRequestId: string | undefined;
  /** Every `x-fal-request-id` fal sent on any attempt (a refused submit may still have made a job). */
  readonly seenIds: string[] = [];
  billableUnits: string | undefined;
  retryAfterS: number | undefined;
  /** fal's `X-Fal-Error-Type` and `X-Fal-Retryable` on the last answer. */
  errorType: string | undefined;
  retryable: boolean | undefined;
  /** How the last attempt ended (for a submit: whether it may have made a job). */
  last: Outcome | undefined;
  /** The error this call ended with inside its fetch; it wins over whatever the client made of it. */
  failure: FalCallError | undefined;
  /** A result's data URI payloads, cut out of the body before the client parsed it. */
  inline: InlineExtraction | undefined;
  private requests = 0;
  private readonly controller = new AbortController();

  constructor(
    readonly phase: FalPhase,
    private readonly caller: AbortSignal | undefined,
    private readonly settings: CallSettings,
  ) {
    if (caller?.aborted) this.controller.abort(caller.reason);
    else caller?.addEventListener('abort', this, { once: true });
  }

  /** The call's own signal: hand it to the client as `abortSignal`. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The caller's signal fired (the call is its own listener: no closure). */
  handleEvent(): void {
    this.controller.abort(this.caller!.reason);
  }

  /** The call is over: stop following the caller. */
  end(): void {
    this.caller?.removeEventListener('abort', this);
  }

  /** The fetch the client makes this call with. */
  readonly fetch: FetchLike = async (input, init) => {
    if (ONE_REQUEST.has(this.phase) && this.requests++ > 0) {
      throw this.fail(new FalCallError(`fal ${this.phase}: the client tried to send the call again`, this.errorInit('network')));
    }
    const outer = init?.signal ?? undefined;
    const signal = outer && outer !== this.signal ? AbortSignal.any([outer, this.signal]) : this.signal;
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw this.fail(this.aborted(signal));
      let res: Response;
      try {
        res = await this.settings.fetch(input, { ...init, signal });
      } catch (err) {
        if (signal.aborted) throw this.fail(this.aborted(signal));
        this.status = undefined;
        this.last = { failed: neverSent(err) ? 'never_sent' : 'after_sending' };
        if (await this.again(attempt, signal)) continue;
        throw this.fail(new FalCallError(`fal ${this.phase}: network error: ${describe(err)}`, this.errorInit('network')));
      }
      this.capture(res);
      if (this.phase === 'stream' && res.ok && !(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
        await res.body?.cancel().catch(() => {});
        throw this.fail(new FalCallError('fal stream: the answer is not an event stream', this.errorInit('bad_response')));
      }
      if (this.phase === 'result' && res.ok && res.body && (res.headers.get('content-type') ?? '').includes('application/json')) {
        const cut = await this.cutInline(res, signal);
        if (cut) return cut;
        if (await this.again(attempt, signal)) continue;
        throw this.fail(new FalCallError(`fal result: the body broke off`, this.errorInit('network')));
      }
      // 4xx but 429 go to the client: it reads them into its ApiError and never retries them.
      if (res.status !== 429 && res.status < 500) return res;
      if (await this.again(attempt, signal, res)) continue;
      throw this.fail(new FalCallError(`fal ${this.phase}: HTTP ${res.status}`, { ...this.errorInit('http'), body: await errorBody(res) }));
    }
  };

  /** Every header we read off fal's answers, read here. */
  private capture(res: Response): void {
    this.status = res.status;
    this.last = { status: res.status, retryAfterS: undefined };
    // What an earlier attempt said is not what this answer says.
    this.billableUnits = undefined;
    const id = res.headers.get('x-fal-request-id');
    if (id) {
      this.falRequestId = id;
      // An id on a 4xx refusal (but 429) names no job: fal turned the request away whole.
      if ((res.ok || res.status === 429 || res.status >= 500) && !this.seenIds.includes(id)) this.seenIds.push(id);
    }
    const units = res.headers.get('x-fal-billable-units');
    if (units !== null) this.billableUnits = units;
    this.errorType = res.headers.get('x-fal-error-type') ?? undefined;
    const retryable = res.headers.get('x-fal-retryable')?.trim().toLowerCase();
    this.retryable = retryable === 'true' ? true : retryable === 'false' ? false : undefined;
    this.retryAfterS = parseRetryAfter((name) => res.headers.get(name));
    this.last.retryAfterS = this.retryAfterS;
  }

  /** Waits and answers true when retry.ts says try again (an answer we drop is drained first). */
  private async again(attempt: number, signal: AbortSignal, dropped?: Response): Promise<boolean> {
    const d = decide(this.phase, this.settings.policy, attempt, this.last!, this.settings.maxRetryAfterMs);
    if (!d.retry || signal.aborted) return false;
    await dropped?.body?.cancel().catch(() => {});
    await (this.settings.sleep ?? sleep)(d.delayMs, signal);
    if (signal.aborted) throw this.fail(this.aborted(signal));
    return true;
  }

  /** The result body with its data URI payloads cut out into `inline`, or undefined when the body broke off. */
  private async cutInline(res: Response, signal: AbortSignal): Promise<Response | undefined> {
    const chunks: Buffer[] = [];
    try {
      for await (const c of res.body!) chunks.push(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
    } catch (err) {
      if (signal.aborted) throw this.fail(this.aborted(signal));
      this.status = undefined;
      this.last = { failed: 'body_broken' };
      return undefined;
    }
    const found = extractInlineImages(chunks);
    this.inline = found ?? undefined;
    const headers = new Headers(res.headers);
    // The new body is neither the length fal sent nor compressed.
    headers.delete('content-length');
    headers.delete('content-encoding');
    const body = found ? found.json : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    return new Response(body, { status: res.status, statusText: res.statusText, headers });
  }

  errorInit(kind: FalCallError['kind']): FalCallErrorInit {
    const init: FalCallErrorInit = { phase: this.phase, kind, status: this.status, falRequestId: this.falRequestId, retryAfterS: this.retryAfterS, billableUnits: this.billableUnits };
    // fal's hints describe an answer; a network failure has none.
    if (kind === 'http') Object.assign(init, { errorType: this.errorType, retryable: this.retryable });
    return init;
  }

  aborted(signal: AbortSignal): FalCallError {
    return new FalCallError(`fal ${this.phase} aborted`, { ...this.errorInit('aborted'), status: undefined, cause: signal.reason });
  }

  private fail(err: FalCallError): FalCallError {
    this.failure = err;
    return err;
  }
}

/** The client's retry setting for the calls that honour it: ours is the only retry layer (retry.ts). */
const NO_CLIENT_RETRY = { maxRetries: 0, baseDelay: 0, maxDelay: 0 };

/** A client that makes its HTTP requests with this call's fetch. */
export function clientFor(call: FalCall, credentials: string | undefined): FalClient {
  return createFalClient({ credentials, fetch: call.fetch as typeof fetch, retry: NO_CLIENT_RETRY });
}

/**
 * What a failed call is to the rest of the service. The error the call's
 * fetch ended with wins (the client may have wrapped it, as a status stream
 * does); otherwise the client's own error for an answer it was handed.
 */
export function callError(err: unknown, call: FalCall): FalCallError {
  if (call.failure) return call.failure;
  if (err instanceof FalCallError) return err;
  if (call.signal.aborted || (err as Error)?.name === 'AbortError') return call.aborted(call.signal);
  if (err instanceof ApiError) {
    return new FalCallError(`fal ${call.phase}: HTTP ${err.status}`, { ...call.errorInit('http'), status: err.status, body: err.body, cause: err });
  }
  return new FalCallError(`fal ${call.phase}: ${(err as Error)?.message ?? 'unknown error'}`, { ...call.errorInit('bad_response'), cause: err });
}

/** An error answer's JSON body, when it has one. */
async function errorBody(res: Response): Promise<unknown> {
  if ((res.headers.get('content-type') ?? '').includes('application/json')) {
    try {
      return await res.json();
    } catch {
      return undefined;
    }
  }
  await res.body?.cancel().catch(() => {});
  return undefined;
}

/** A network failure's message and code, in words: the error itself is not kept (the client would retry anything that carries it). */
function describe(err: unknown): string {
  let cur: unknown = err;
  const parts: string[] = [];
  for (let i = 0; i < 3 && cur && typeof cur === 'object'; i++) {
    const { message, code } = cur as { message?: unknown; code?: unknown };
    if (typeof message === 'string' && message) parts.push(typeof code === 'string' ? `${message} (${code})` : message);
    cur = (cur as { cause?: unknown }).cause;
  }
  return parts.join(': ') || 'unknown';
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
