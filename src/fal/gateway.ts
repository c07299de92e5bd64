import { type QueueStatus } from '@fal-ai/client';
import { createRedirectFetch, type FetchLike } from './redirect-fetch.js';
import { FalCallError, type FalPhase } from './errors.js';
import { FalCall, callError, clientFor } from './fal-call.js';
import { submitOnce, submitFailure, submitHeaders, type SubmitSettings } from './submit-once.js';
import { DEFAULT_MAX_RETRY_AFTER_MS, DEFAULT_RETRY, type RetryPolicy } from './retry.js';
import { createPollScheduler } from './poll-scheduler.js';
import type { CompletionHub } from './webhooks.js';
import type { InlineExtraction, InlineImage } from './inline-images.js';
import { DimensionsError, dimensionsFromUrl, fillDimensions, isSide } from './image-dimensions.js';
import { listRequests } from './request-listing.js';
import { mapFalError } from './upstream-errors.js';
import type { FalGateway, FalImageOutput, FalJobStatus, FalResult } from './types.js';

export { FalCallError, type FalPhase, type FalErrorKind } from './errors.js';
export type { FalListedRequest, ListingWindow } from './request-listing.js';
export type { CallOptions, FalCancelOutcome, FalGateway, FalImage, FalImageOutput, FalJobStatus, FalResult } from './types.js';

/**
 * The only module that talks to fal. Everything above it sees plain data and
 * `FalCallError`, never the client's classes, so the rest of the service does
 * not change if fal's client does. Every call is made by `@fal-ai/client`,
 * through a fetch of the call's own (fal-call.ts); the submit is sent once
 * (submit-once.ts).
 */

export interface FalGatewayOptions extends SubmitSettings {
  credentials?: string;
  /** `FAL_BASE_URL`: host-prefixed fal-protocol server (the emulator). */
  baseUrl?: string;
  fetchImpl?: FetchLike;
  /** Per-phase retry budgets over retry.ts's defaults. */
  retry?: Partial<Record<FalPhase, RetryPolicy>>;
  /** Longest `retry-after` waited inside one call (default 5 s); a longer one ends the call. */
  maxRetryAfterMs?: number;
  /** Poll delays used when the status stream is unavailable. */
  pollMinMs?: number;
  pollMaxMs?: number;
  /** A fetch per phase (separate connection pools for status streams). */
  fetchFor?: (phase: FalPhase) => FetchLike | undefined;
  /**
   * Status streams open at once. Each holds a connection for the whole job,
   * so past this many jobs wait by polling instead (default 256).
   */
  maxStatusStreams?: number;
  /** Status polls per second across all jobs (default 200; 0 = no cap). */
  pollRps?: number;
  /**
   * fal webhooks: jobs are submitted with `url` as `fal_webhook` and wait for
   * the callback, with no status traffic; polling starts only if it is later
   * than `graceMs`.
   */
  webhook?: { url: string; hub: CompletionHub; graceMs: number };
  /** Longest the header of an output image without width/height may take to read (default 30 s). */
  dimensionsTimeoutMs?: number;
  /** Told about every gateway call: phase, seconds (including our retries), and whether it failed. */
  observe?: (phase: FalPhase, seconds: number, failed: boolean) => void;
}

const STATUSES = new Set(['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']);
/** fal's CDN hosts (`v3.fal.media`, `fal.media`, …). */
const FAL_MEDIA_HOST = /^(?:[a-z0-9-]+\.)*fal\.media$/;

export function createFalGateway(opts: FalGatewayOptions): FalGateway {
  const inner = createRedirectFetch({ baseUrl: opts.baseUrl, fetchImpl: opts.fetchImpl });
  const perPhase = new Map<FalPhase, FetchLike>();
  const fetchFor = (phase: FalPhase): FetchLike => {
    let f = perPhase.get(phase);
    if (!f) {
      const impl = opts.fetchFor?.(phase);
      f = impl ? createRedirectFetch({ baseUrl: opts.baseUrl, fetchImpl: impl }) : inner;
      perPhase.set(phase, f);
    }
    return f;
  };
  const policies = { ...DEFAULT_RETRY, ...(opts.retry ?? {}) };
  const maxRetryAfterMs = opts.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS;
  const pollMinMs = opts.pollMinMs ?? 100;
  const pollMaxMs = opts.pollMaxMs ?? 1000;
  const stats = { statusCalls: 0, streamCalls: 0, streamsOpen: 0, webhookWakeups: 0 };
  const maxStreams = opts.maxStatusStreams ?? 256;
  const dimensionsTimeoutMs = opts.dimensionsTimeoutMs ?? 30_000;
  const headers = submitHeaders(opts);

  // Jobs without a status stream or a webhook wait here, each a record in one schedule (see poll-scheduler.ts).
  const polls = createPollScheduler({
    poll: (endpoint, falRequestId, signal) => gateway.status(endpoint, falRequestId, { signal }),
    aborted: (signal) => abortedError('status', signal),
    ratePerSecond: opts.pollRps ?? 200,
    maxDelayMs: pollMaxMs,
  });
  const poll = (endpoint: string, falRequestId: string, signal: AbortSignal | undefined, onStatus: ((s: FalJobStatus) => void) | undefined, firstDelayMs: number): Promise<void> =>
    polls.wait({ endpoint, falRequestId }, signal, onStatus, firstDelayMs);

  /** One fal call: `fn` makes it with the client built for it; its failure comes out as a FalCallError. */
  async function call<T>(phase: FalPhase, signal: AbortSignal | undefined, fn: (client: ReturnType<typeof clientFor>, c: FalCall) => Promise<T>): Promise<{ value: T; call: FalCall }> {
    const started = performance.now();
    const c = new FalCall(phase, signal, { fetch: fetchFor(phase), policy: policies[phase], maxRetryAfterMs });
    let failed = false;
    try {
      return { value: await fn(clientFor(c, opts.credentials), c), call: c };
    } catch (err) {
      failed = true;
      const e = callError(err, c);
      throw phase === 'submit' ? submitFailure(e, c) : e;
    } finally {
      c.end();
      opts.observe?.(phase, (performance.now() - started) / 1000, failed);
    }
  }

  function badResponse(phase: FalPhase, what: string, c: FalCall): FalCallError {
    return new FalCallError(`fal ${phase}: ${what}`, { phase, kind: 'bad_response', status: c.status, falRequestId: c.falRequestId });
  }

  function parseStatus(raw: unknown, c: FalCall): FalJobStatus {
    const s = raw as QueueStatus | undefined;
    if (!s || typeof s !== 'object' || !STATUSES.has((s as { status?: string }).status ?? '')) {
      throw badResponse(c.phase, 'status response is not a queue status', c);
    }
    const { queue_position: qp, error, error_type: errorType } = s as { queue_position?: unknown; error?: unknown; error_type?: unknown };
    const failed = s.status === 'COMPLETED' && ((typeof error === 'string' && error !== '') || typeof errorType === 'string');
    return {
      status: s.status,
      ...(typeof qp === 'number' ? { queuePosition: qp } : {}),
      ...(failed ? { failed: typeof errorType === 'string' ? { errorType } : {} } : {}),
    };
  }

  /** The callback is later than the grace period: whichever comes first, fal's callback or polling. */
  async function lateCallback(endpoint: string, falRequestId: string, signal: AbortSignal | undefined, onStatus: ((s: FalJobStatus) => void) | undefined): Promise<void> {
    const hub = opts.webhook!.hub;
    // Ends both waits: the job's abort, or whichever of them finishes first.
    const late = new AbortController();
    const follow = () => late.abort(signal!.reason);
    if (signal?.aborted) follow();
    else signal?.addEventListener('abort', follow, { once: true });
    const viaCallback = hub.wait(falRequestId, late.signal).then((outcome) => {
      if (outcome !== 'notified') return;
      stats.webhookWakeups++;
      late.abort();
    });
    try {
      await poll(endpoint, falRequestId, late.signal, onStatus, pollMaxMs);
    } catch (err) {
      // Polling was stopped because the callback came: that is the answer.
      if (!late.signal.aborted || signal?.aborted) throw err;
    } finally {
      late.abort();
      signal?.removeEventListener('abort', follow);
      await viaCallback;
    }
    if (signal?.aborted) throw abortedError('status', signal);
  }

  /**
   * The SSE status stream tells us the moment a job completes, with no poll
   * delay in between. If it is unavailable or ends early we poll. At most
   * `maxStatusStreams` at once: each holds a connection for the job's life.
   */
  async function viaStream(endpoint: string, falRequestId: string, signal: AbortSignal | undefined, onStatus: ((s: FalJobStatus) => void) | undefined): Promise<void> {
    stats.streamsOpen++;
    try {
      stats.streamCalls++;
      const done = await call('stream', signal, async (client, c) => {
        const stream = await client.queue.streamStatus(endpoint, { requestId: falRequestId, logs: false });
        const onAbort = () => stream.abort();
        c.signal.addEventListener('abort', onAbort, { once: true });
        stream.on('data', (d: unknown) => {
          try {
            onStatus?.(parseStatus(d, c));
          } catch {
            // malformed events are judged by the final status below
          }
        });
        try {
          return (await stream.done()) as unknown;
        } finally {
          c.signal.removeEventListener('abort', onAbort);
        }
      });
      if (signal?.aborted) throw abortedError('stream', signal);
      if ((done.value as { status?: unknown } | undefined)?.status === 'COMPLETED') return;
    } catch (err) {
      if (signal?.aborted) throw abortedError('stream', signal);
      // A 404 means fal does not know the job: polling would not help.
      if (err instanceof FalCallError && err.kind === 'http' && err.status === 404) throw err;
    } finally {
      stats.streamsOpen--;
    }
    return poll(endpoint, falRequestId, signal, onStatus, pollMinMs);
  }

  /** The result's output, checked, with the images fal sent inline taken off the call. */
  function readResult(data: unknown, c: FalCall, falRequestId: string): FalResult {
    let output = data as FalImageOutput | undefined;
    const cut = c.inline;
    c.inline = undefined;
    const inlineImages = cut ? placedInline(output, cut) : undefined;
    if (cut && !inlineImages) {
      // A data URI somewhere else than an image's url: parse the body whole, as the client would have.
      try {
        output = JSON.parse(Buffer.concat(cut.original).toString('utf8')) as FalImageOutput;
      } catch {
        throw badResponse('result', 'result is not JSON', c);
      }
    }
    if (!output || typeof output !== 'object' || !Array.isArray(output.images)) {
      throw badResponse('result', 'result has no images array', c);
    }
    for (const img of output.images) {
      // Width and height may be missing (optional in fal's types): `sized` reads them from the image.
      if (!img || typeof img.url !== 'string') throw badResponse('result', 'result image lacks a url', c);
    }
    return {
      falRequestId,
      ...(c.falRequestId && c.falRequestId !== falRequestId ? { otherFalId: c.falRequestId } : {}),
      output,
      billableUnits: c.billableUnits ?? null,
      ...(inlineImages ? { inlineImages } : {}),
    };
  }

  /**
   * The result with every image's width and height, read from the image
   * itself where fal left them out: prices depend on them. If they cannot be
   * read, the job still completed and billed at fal: the error keeps fal's
   * units and the output (`FalCallError.output`) so the cost is not lost.
   */
  async function sized(result: FalResult, signal: AbortSignal | undefined): Promise<FalResult> {
    const images = result.output.images;
    if (images.every((img) => isSide(img.width) && isSide(img.height))) return result;
    const timeout = AbortSignal.timeout(dimensionsTimeoutMs);
    const fetchImpl = fetchFor('other');
    try {
      await fillDimensions(images, result.inlineImages, (url) => {
        if (!imageUrlAllowed(url)) throw new DimensionsError(`its url is not on fal's media hosts`);
        return dimensionsFromUrl(url, { fetch: fetchImpl, signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
      });
    } catch (err) {
      if (signal?.aborted) throw abortedError('result', signal);
      throw new FalCallError(`fal result: ${(err as Error).message}`, {
        phase: 'result',
        kind: 'bad_response',
        status: 200,
        falRequestId: result.falRequestId,
        billableUnits: result.billableUnits ?? undefined,
        output: result.output,
        cause: err,
      });
    }
    return result;
  }

  /** Images are read only from fal's media hosts, or from the fal-protocol server FAL_BASE_URL names (every URL goes there). */
  function imageUrlAllowed(url: string): boolean {
    if (opts.baseUrl) return URL.canParse(url);
    if (!URL.canParse(url)) return false;
    const u = new URL(url);
    return u.protocol === 'https:' && FAL_MEDIA_HOST.test(u.hostname);
  }

  const gateway: FalGateway = {
    stats,
    callerError: mapFalError,

    async submit(endpoint, input, o = {}) {
      const webhookUrl = o.webhookUrl ?? opts.webhook?.url;
      return (await call('submit', o.signal, (client, c) => submitOnce(client, c, endpoint, input, webhookUrl, headers))).value;
    },

    async status(endpoint, falRequestId, o = {}) {
      stats.statusCalls++;
      const { value, call: c } = await call('status', o.signal, (client, c) => client.queue.status(endpoint, { requestId: falRequestId, logs: false, abortSignal: c.signal }));
      return parseStatus(value, c);
    },

    // Not async itself: a waiting job should hold the one promise of the
    // hub or the poll schedule it waits in, not a frame of ours around it.
    waitForCompletion(endpoint, falRequestId, o = {}) {
      const signal = o.signal;
      if (opts.webhook) {
        // The grace period is a place in the hub's deadline queue on the same
        // wait record: a waiting job holds one record, one promise, no signals.
        return opts.webhook.hub.wait(falRequestId, signal, opts.webhook.graceMs).then((first) => {
          if (signal?.aborted) throw abortedError('status', signal);
          if (first === 'notified') {
            stats.webhookWakeups++;
            return;
          }
          return lateCallback(endpoint, falRequestId, signal, o.onStatus);
        });
      }
      if (stats.streamsOpen >= maxStreams) return poll(endpoint, falRequestId, signal, o.onStatus, pollMinMs);
      return viaStream(endpoint, falRequestId, signal, o.onStatus);
    },

    async result(endpoint, falRequestId, o = {}) {
      const { value, call: c } = await call('result', o.signal, (client, c) => client.queue.result(endpoint, { requestId: falRequestId, abortSignal: c.signal }));
      return sized(readResult(value.data, c, falRequestId), o.signal);
    },

    async cancel(endpoint, falRequestId, o = {}) {
      try {
        await call('cancel', o.signal, (client, c) => client.queue.cancel(endpoint, { requestId: falRequestId, abortSignal: c.signal }));
        return 'cancellation_requested';
      } catch (err) {
        if (err instanceof FalCallError && err.kind === 'http') {
          const st = (err.body as { status?: unknown } | undefined)?.status;
          if (err.status === 400 && st === 'ALREADY_COMPLETED') return 'already_completed';
          if (err.status === 404) return 'not_found';
        }
        return 'failed';
      }
    },

    async upload(data, contentType, fileName, o = {}) {
      // The client names the stored file after a File's name, else after the clock.
      const file = new File([data instanceof Blob ? data : new Uint8Array(data)], fileName, { type: contentType });
      const lifecycle = o.lifetimeS === undefined ? undefined : { expiresIn: o.lifetimeS };
      const { value, call: c } = await call('storage', o.signal, (client) => client.storage.upload(file, lifecycle ? { lifecycle } : undefined));
      if (typeof value !== 'string' || !URL.canParse(value)) throw badResponse('storage', 'upload answered no file URL', c);
      return value;
    },

    async listRequests(endpoint, window, o = {}) {
      return (await call('listing', o.signal, (_client, c) => listRequests(c, opts.credentials, endpoint, window))).value;
    },

    async ping(o = {}) {
      try {
        const { value: res } = await call('other', o.signal, (_client, c) => c.fetch('https://queue.fal.run/', { method: 'GET', signal: c.signal }));
        await res.body?.cancel().catch(() => {});
        return true;
      } catch (err) {
        // fal answered, whatever it said.
        return err instanceof FalCallError && err.kind === 'http';
      }
    },
  };
  return gateway;
}

/**
 * The cut-out images, if their placeholders are exactly the images' urls,
 * each used once. A placeholder anywhere else (a data URI in an echoed
 * input, say) stands where fal's own text should be, so then none is used.
 */
function placedInline(output: FalImageOutput | undefined, cut: InlineExtraction): ReadonlyMap<string, InlineImage> | undefined {
  const images: unknown = output?.images;
  if (!Array.isArray(images)) return undefined;
  const placed = new Set<string>();
  for (const img of images as Array<{ url?: unknown } | null>) {
    const url = img?.url;
    if (typeof url !== 'string' || !cut.images.has(url)) continue;
    if (placed.has(url)) return undefined;
    placed.add(url);
  }
  return placed.size === cut.images.size ? cut.images : undefined;
}

function abortedError(phase: FalPhase, signal: AbortSignal): FalCallError {
  return new FalCallError(`fal ${phase} aborted`, { phase, kind: 'aborted', cause: signal.reason });
}
