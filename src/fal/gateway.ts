import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createFalClient, ApiError as FalApiError, type QueueStatus } from '@fal-ai/client';
import { createFalTransport, HIDDEN_RETRYABLE_STATUS, FalTransportError, type CallCapture, type FalPhase, type TransportOptions } from './transport.js';
import type { FetchLike } from './redirect-fetch.js';
import { FollowingSignal, type AbortLike } from '../abort-like.js';
import { createPollScheduler } from './poll-scheduler.js';
import type { CompletionHub } from './webhooks.js';
import type { InlineExtraction, InlineImage } from './inline-images.js';

/**
 * The only module that talks to fal. Everything above it sees plain data and
 * `FalCallError`, never the client's classes, so the rest of the service does
 * not change if fal's client does.
 */

export interface FalImage {
  url: string;
  width: number;
  height: number;
  content_type: string;
  file_name?: string;
  file_size?: number;
}

export interface FalImageOutput {
  images: FalImage[];
  seed?: number;
  has_nsfw_concepts?: boolean[];
  prompt?: string;
  timings?: Record<string, unknown>;
  [k: string]: unknown;
}

export interface FalResult {
  falRequestId: string;
  output: FalImageOutput;
  /** fal's `x-fal-billable-units`, verbatim (a decimal string), when sent. */
  billableUnits: string | null;
  /**
   * Images fal sent inline (sync_mode data URIs), keyed by the placeholder
   * that stands in `output.images[].url`: their base64 as views of the
   * response body, never made into a string (see inline-images.ts).
   */
  inlineImages?: ReadonlyMap<string, InlineImage>;
}

export type FalJobStatus = { status: 'IN_QUEUE' | 'IN_PROGRESS' | 'COMPLETED'; queuePosition?: number };

export type FalCancelOutcome = 'cancellation_requested' | 'already_completed' | 'not_found' | 'failed';

export type FalErrorKind = 'http' | 'network' | 'aborted' | 'bad_response';

export class FalCallError extends Error {
  readonly phase: FalPhase;
  readonly kind: FalErrorKind;
  /** The status fal really answered (not the one we showed the client). */
  readonly status: number | undefined;
  readonly body: unknown;
  readonly falRequestId: string | undefined;
  readonly retryAfterS: number | undefined;
  /** A submit that may have created a job we never heard about. */
  readonly ambiguous: boolean;
  /** Jobs fal reported on failed submit attempts: they exist and may bill. */
  readonly strayIds: string[];

  constructor(message: string, init: { phase: FalPhase; kind: FalErrorKind; status?: number; body?: unknown; falRequestId?: string; retryAfterS?: number; ambiguous?: boolean; strayIds?: string[]; cause?: unknown }) {
    super(message, { cause: init.cause });
    this.name = 'FalCallError';
    this.phase = init.phase;
    this.kind = init.kind;
    this.status = init.status;
    this.body = init.body;
    this.falRequestId = init.falRequestId;
    this.retryAfterS = init.retryAfterS;
    this.ambiguous = init.ambiguous ?? false;
    this.strayIds = init.strayIds ?? [];
  }
}

/**
 * A result fetch answered with a 4xx: the job itself ended without images
 * (bad input, cancelled). A 5xx or an unreadable answer could equally be a
 * transient fault in front of a finished, billed job, so it proves nothing.
 */
export function jobFailed(err: FalCallError): boolean {
  return err.phase === 'result' && err.kind === 'http' && err.status !== undefined && err.status >= 400 && err.status < 500 && err.status !== 429;
}

export interface CallOptions {
  signal?: AbortLike;
}

export interface FalGateway {
  /**
   * `strayIds`: jobs fal reported on earlier, refused attempts of this submit
   * (a 503 can still have created one): they may bill and must be recorded.
   */
  submit(endpoint: string, input: Record<string, unknown>, opts?: CallOptions & { webhookUrl?: string }): Promise<{ falRequestId: string; strayIds: string[] }>;
  /** Resolves once the job reports COMPLETED (which failed jobs also do). */
  waitForCompletion(endpoint: string, falRequestId: string, opts?: CallOptions & { onStatus?: (s: FalJobStatus) => void }): Promise<void>;
  status(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalJobStatus>;
  result(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalResult>;
  cancel(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalCancelOutcome>;
  /**
   * Stores a file in fal's storage (initiate, then a PUT to the pre-signed
   * upload URL) and answers its public URL, which fal inputs can reference.
   */
  upload(data: Blob | Buffer, contentType: string, fileName: string, opts?: CallOptions): Promise<string>;
  /** Any HTTP answer from the queue host counts as reachable. */
  ping(opts?: CallOptions): Promise<boolean>;
  /** Counters for metrics and benchmarks. */
  readonly stats: { statusCalls: number; streamCalls: number; streamsOpen: number; webhookWakeups: number };
}

export interface FalGatewayOptions {
  credentials?: string;
  /** `FAL_BASE_URL`: host-prefixed fal-protocol server (the emulator). */
  baseUrl?: string;
  fetchImpl?: FetchLike;
  retry?: TransportOptions['retry'];
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
  /** Told about every gateway call: phase, seconds (including our retries), and whether it failed. */
  observe?: (phase: FalPhase, seconds: number, failed: boolean) => void;
}

const STATUSES = new Set(['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']);

export function createFalGateway(opts: FalGatewayOptions): FalGateway {
  const transport = createFalTransport({ baseUrl: opts.baseUrl, fetchImpl: opts.fetchImpl, fetchFor: opts.fetchFor, retry: opts.retry, maxRetryAfterMs: opts.maxRetryAfterMs });
  const client = createFalClient({
    credentials: opts.credentials,
    fetch: transport.fetch as typeof fetch,
    // Our transport does the retrying; keep the client's own to a minimum
    // (its per-call queue settings still override this, hence the 599 trick).
    retry: { maxRetries: 0, baseDelay: 0, maxDelay: 0 },
  });
  const pollMinMs = opts.pollMinMs ?? 100;
  const pollMaxMs = opts.pollMaxMs ?? 1000;
  const stats = { statusCalls: 0, streamCalls: 0, streamsOpen: 0, webhookWakeups: 0 };
  const maxStreams = opts.maxStatusStreams ?? 256;

  // Jobs without a status stream or a webhook wait here, each a record in one schedule (see poll-scheduler.ts).
  const polls = createPollScheduler({
    // Each poll runs under a signal of its own that follows the job's (the transport's per-call signal), so what fetch hangs on it goes with the poll.
    poll: (endpoint, falRequestId, signal) => gateway.status(endpoint, falRequestId, { signal }),
    aborted: (signal) => abortedError('status', signal),
    ratePerSecond: opts.pollRps ?? 200,
    maxDelayMs: pollMaxMs,
  });
  const poll = (endpoint: string, falRequestId: string, signal: AbortLike | undefined, onStatus: ((s: FalJobStatus) => void) | undefined, firstDelayMs: number): Promise<void> =>
    polls.wait({ endpoint, falRequestId }, signal, onStatus, firstDelayMs);

  function translate(err: unknown, capture: CallCapture): FalCallError {
    if (err instanceof FalCallError) return err;
    const base = { phase: capture.phase, falRequestId: capture.falRequestId, retryAfterS: capture.retryAfterS, strayIds: capture.phase === 'submit' ? [...capture.seenIds] : [], cause: err };
    if (capture.signal?.aborted || (err as Error)?.name === 'AbortError') {
      return new FalCallError(`fal ${capture.phase} aborted`, { ...base, kind: 'aborted', ambiguous: capture.phase === 'submit' });
    }
    if (err instanceof FalTransportError || (capture.networkError && capture.status === undefined)) {
      return new FalCallError(`fal ${capture.phase}: network error`, { ...base, kind: 'network', ambiguous: capture.ambiguous });
    }
    if (err instanceof FalApiError) {
      const status = err.status === HIDDEN_RETRYABLE_STATUS ? capture.status : err.status;
      return new FalCallError(`fal ${capture.phase}: HTTP ${status}`, {
        ...base,
        kind: 'http',
        status,
        body: err.body,
        ambiguous: capture.phase === 'submit' && (status === 500 || status === 502 || status === 504),
      });
    }
    return new FalCallError(`fal ${capture.phase}: ${(err as Error)?.message ?? 'unknown error'}`, { ...base, kind: 'bad_response' });
  }

  /** `fn` must hand its fal call the signal it is given: that is how the transport knows the call (see transport.ts). */
  async function call<T>(phase: FalPhase, signal: AbortLike | undefined, fn: (c: CallCapture, signal: AbortSignal) => Promise<T>, streamOf?: string): Promise<{ value: T; capture: CallCapture }> {
    const started = performance.now();
    let failed = false;
    try {
      return await transport.run(phase, signal, async (capture, own) => {
        try {
          return { value: await fn(capture, own), capture };
        } catch (err) {
          throw translate(err, capture);
        }
      }, streamOf);
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      opts.observe?.(phase, (performance.now() - started) / 1000, failed);
    }
  }

  function badResponse(phase: FalPhase, what: string, capture: CallCapture): FalCallError {
    return new FalCallError(`fal ${phase}: ${what}`, { phase, kind: 'bad_response', status: capture.status, falRequestId: capture.falRequestId });
  }

  function parseStatus(raw: unknown, capture: CallCapture): FalJobStatus {
    const s = raw as QueueStatus | undefined;
    if (!s || typeof s !== 'object' || !STATUSES.has((s as { status?: string }).status ?? '')) {
      throw badResponse(capture.phase, 'status response is not a queue status', capture);
    }
    const qp = (s as { queue_position?: unknown }).queue_position;
    return { status: s.status, ...(typeof qp === 'number' ? { queuePosition: qp } : {}) };
  }

  /** The callback is later than the grace period: whichever comes first, fal's callback or polling. */
  async function lateCallback(endpoint: string, falRequestId: string, signal: AbortLike | undefined, onStatus: ((s: FalJobStatus) => void) | undefined): Promise<void> {
    const hub = opts.webhook!.hub;
    // Ends both waits: the job's abort, or whichever of them finishes first.
    const late = new FollowingSignal(signal);
    const viaCallback = hub.wait(falRequestId, late.signal).then((outcome) => {
      if (outcome !== 'notified') return;
      stats.webhookWakeups++;
      late.controller.abort();
    });
    try {
      await poll(endpoint, falRequestId, late.signal, onStatus, pollMaxMs);
    } catch (err) {
      // Polling was stopped because the callback came: that is the answer.
      if (!late.signal.aborted || signal?.aborted) throw err;
    } finally {
      late.controller.abort();
      late.detach();
      await viaCallback;
    }
    if (signal?.aborted) throw abortedError('status', signal);
  }

  /**
   * The SSE status stream tells us the moment a job completes, with no poll
   * delay in between. If it is unavailable or ends early we poll. At most
   * `maxStatusStreams` at once: each holds a connection for the job's life.
   */
  async function viaStream(endpoint: string, falRequestId: string, signal: AbortLike | undefined, onStatus: ((s: FalJobStatus) => void) | undefined): Promise<void> {
    stats.streamsOpen++;
    try {
      stats.streamCalls++;
      const done = await call('stream', signal, async (capture) => {
        const stream = await client.queue.streamStatus(endpoint, { requestId: falRequestId, logs: false });
        const onAbort = () => stream.abort();
        signal?.addEventListener('abort', onAbort, { once: true });
        stream.on('data', (d: unknown) => {
          try {
            onStatus?.(parseStatus(d, capture));
          } catch {
            // malformed events are judged by the final status below
          }
        });
        try {
          return (await stream.done()) as unknown;
        } finally {
          signal?.removeEventListener('abort', onAbort);
        }
      }, falRequestId);
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

  const statusHeaders: Record<string, string> = { accept: 'application/json', 'user-agent': FAL_CLIENT_USER_AGENT, ...(opts.credentials ? { authorization: `Key ${opts.credentials}` } : {}) };
  // The client's submit headers: JSON both ways, and the queue priority it always sends.
  const submitHeaders: Record<string, string> = { ...statusHeaders, 'content-type': 'application/json', 'x-fal-queue-priority': 'normal' };

  const gateway: FalGateway = {
    stats,

    async submit(endpoint, input, o = {}) {
      const webhookUrl = o.webhookUrl ?? opts.webhook?.url;
      // Sent as the client sends it (URL, headers, JSON body), without its
      // request machinery: every image request submits, and what a request
      // allocates while it is being taken in is what ends up scattered
      // through the old generation once thousands wait (bench/waiting.ts).
      // Our inputs are parsed JSON, so there is never a Blob for the
      // client's input transform to upload.
      const { value, capture } = await call('submit', o.signal, async (_c, signal) =>
        readAnswer(await transport.fetch(submitUrl(endpoint, webhookUrl), { method: 'POST', headers: submitHeaders, body: JSON.stringify(input), signal })),
      );
      const id = (value as { request_id?: unknown })?.request_id;
      if (typeof id !== 'string' || id.length === 0) {
        throw new FalCallError('fal submit: no request_id in the answer', { phase: 'submit', kind: 'bad_response', status: capture.status, ambiguous: true });
      }
      return { falRequestId: id, strayIds: capture.seenIds.filter((s) => s !== id) };
    },

    async status(endpoint, falRequestId, o = {}) {
      stats.statusCalls++;
      // The one call made over and over while jobs wait (200/s by default),
      // so it skips the client: its request machinery was a third of each
      // poll's garbage. Same URL, headers and error as the client's.
      const { value, capture } = await call('status', o.signal, async (_c, signal) =>
        readAnswer(await transport.fetch(statusUrl(endpoint, falRequestId), { method: 'GET', headers: statusHeaders, signal })),
      );
      return parseStatus(value, capture);
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
      const { value, capture } = await call('result', o.signal, async (c, signal) => {
        try {
          return await client.queue.result(endpoint, { requestId: falRequestId, abortSignal: signal });
        } catch (err) {
          c.inline = undefined; // see below: the capture may outlive the call
          throw err;
        }
      });
      let output = (value as { data?: unknown }).data as FalImageOutput | undefined;
      // Taken off the capture at once: the payloads belong to the result from here on.
      const cut = capture.inline;
      capture.inline = undefined;
      const inlineImages = cut ? placedInline(output, cut) : undefined;
      if (cut && !inlineImages) {
        // A data URI somewhere else than an image's url: parse the body whole, as the client would have.
        try {
          output = JSON.parse(Buffer.concat(cut.original).toString('utf8')) as FalImageOutput;
        } catch {
          throw badResponse('result', 'result is not JSON', capture);
        }
      }
      if (!output || typeof output !== 'object' || !Array.isArray(output.images)) {
        throw badResponse('result', 'result has no images array', capture);
      }
      for (const img of output.images) {
        if (!img || typeof img.url !== 'string' || !Number.isInteger(img.width) || !Number.isInteger(img.height)) {
          throw badResponse('result', 'result image lacks url/width/height', capture);
        }
      }
      return {
        falRequestId: capture.falRequestId ?? falRequestId,
        output,
        billableUnits: capture.billableUnits ?? null,
        ...(inlineImages ? { inlineImages } : {}),
      };
    },

    async cancel(endpoint, falRequestId, o = {}) {
      try {
        await call('cancel', o.signal, (_c, signal) => client.queue.cancel(endpoint, { requestId: falRequestId, abortSignal: signal }));
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
      const { value, capture } = await call('storage', o.signal, () => client.storage.upload(file));
      if (typeof value !== 'string' || !URL.canParse(value)) throw badResponse('storage', 'upload answered no file URL', capture);
      return value;
    },

    async ping(o = {}) {
      try {
        const res = await transport.run('other', o.signal, (_c, signal) => transport.fetch('https://queue.fal.run/', { method: 'GET', signal }));
        await res.body?.cancel().catch(() => {});
        return true;
      } catch {
        return false;
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

/** What the fal client sends as its User-Agent: its package name and version (its package.json is not exported, so read beside its entry point). */
const FAL_CLIENT_USER_AGENT = (() => {
  const pkg = JSON.parse(readFileSync(join(dirname(createRequire(import.meta.url).resolve('@fal-ai/client')), '..', 'package.json'), 'utf8')) as { name: string; version: string };
  return `${pkg.name}/${pkg.version}`;
})();

/** Endpoint namespaces the client treats as a prefix of owner/alias (its parseEndpointId). */
const ENDPOINT_NAMESPACES = new Set(['workflows', 'comfy']);

/**
 * A job's status URL, as the client builds it: the queue host, the app's
 * owner/alias only (a sub-path such as `turbo/lora` is dropped), then
 * `/requests/{id}/status?logs=0` (REFERENCE: fal queue protocol).
 */
export function statusUrl(endpoint: string, falRequestId: string): string {
  const parts = endpoint.split('/');
  const app = ENDPOINT_NAMESPACES.has(parts[0]!) ? parts.slice(0, 3) : parts.slice(0, 2);
  return `https://queue.fal.run/${app.join('/')}/requests/${encodeURIComponent(falRequestId)}/status?logs=0`;
}

/** A queue submit's URL, as the client builds it: the whole endpoint id, and `fal_webhook` when callbacks are on. */
export function submitUrl(endpoint: string, webhookUrl: string | undefined): string {
  const base = `https://queue.fal.run/${endpoint.replace(/^\/+|\/+$/g, '')}`;
  return webhookUrl ? `${base}?${new URLSearchParams({ fal_webhook: webhookUrl }).toString()}` : base;
}

/** The client's default handling of an answer: JSON (or text) on success, its ApiError otherwise. */
async function readAnswer(res: Response): Promise<unknown> {
  const type = res.headers.get('content-type') ?? '';
  const requestId = res.headers.get('x-fal-request-id') ?? '';
  if (!res.ok) {
    if (type.includes('application/json')) {
      const body = (await res.json()) as { message?: unknown };
      throw new FalApiError({ message: typeof body?.message === 'string' ? body.message : res.statusText, status: res.status, body, requestId });
    }
    await res.body?.cancel().catch(() => {});
    throw new FalApiError({ message: `HTTP ${res.status}: ${res.statusText}`, status: res.status, body: undefined, requestId });
  }
  if (type.includes('application/json')) return res.json();
  return res.text();
}

function abortedError(phase: FalPhase, signal: AbortLike): FalCallError {
  return new FalCallError(`fal ${phase} aborted`, { phase, kind: 'aborted', cause: signal.reason });
}
