import type { FalClient } from '@fal-ai/client';
import { FalCallError } from './errors.js';
import type { FalCall } from './fal-call.js';

/**
 * A queue submit, sent exactly once unless fal's answer proves it made no
 * job: the one place we depart from how `@fal-ai/client` sends a call.
 *
 * Why: the client retries a submit by itself, 3 times on 429, 502, 503, 504
 * and network errors, and no setting of `createFalClient` turns that off
 * (`queue.js` passes its own QUEUE_RETRY_CONFIG with every submit; REFERENCE
 * §3). A 502, a 504 or a connection lost after the request went out can
 * follow a job fal already made, so the client's resend makes a second
 * billable job: the emulator's `{"phase":"submit","kind":"reset","commit":true}`
 * shows it, one `client.queue.submit` making two jobs
 * (test/images/duplicate-submit.test.ts, test/fal/submit-once.test.ts).
 *
 * How: the client still builds and sends the submit (URL, headers, body,
 * answer), through the call's own fetch (fal-call.ts), which never lets it
 * see an outcome it would retry and refuses a second request for the call.
 * Our one retry layer (retry.ts) sends it again only on proof that no job
 * was made: the connection was never made, or fal refused it (429, 503).
 * Every `x-fal-request-id` seen on an attempt that did not return the job
 * is reported (`strayIds`): an id on a refused submit is not proof of a
 * job (REFERENCE §3b), but if one was made it bills and must be recorded.
 */


export interface Submitted {
  falRequestId: string;
  /** Jobs fal named on earlier, refused attempts of this submit. */
  strayIds: string[];
}

/** What every submit says to fal besides its input, set once per gateway. */
export interface SubmitSettings {
  /**
   * Our own deadline for a request (`REQUEST_TIMEOUT_MS`). Sent as fal's
   * start deadline, `x-fal-request-timeout`, in whole seconds rounded up: a
   * job that has not started when we stop waiting for it then expires at fal
   * (504, unbilled) instead of running and billing after we have answered
   * (https://docs.fal.ai/documentation/model-apis/common-parameters).
   */
  requestTimeoutMs?: number | undefined;
  /**
   * `FAL_STORE_IO`: false sends `X-Fal-Store-IO: 0`, so fal keeps the
   * inputs and outputs out of its request history; media URLs still work
   * (https://docs.fal.ai/documentation/model-apis/media-expiration).
   */
  storeIo?: boolean | undefined;
}

/**
 * The headers of every submit, built once. The client's own `startTimeout`
 * is not used: it refuses anything up to 1 s, while fal takes more than 0.1 s
 * and REQUEST_TIMEOUT_MS may be 1 s; its `headers` option sends them as given.
 */
export function submitHeaders(settings: SubmitSettings): Readonly<Record<string, string>> {
  const headers: Record<string, string> = {};
  if (settings.requestTimeoutMs !== undefined) headers['x-fal-request-timeout'] = String(startTimeoutSeconds(settings.requestTimeoutMs));
  if (settings.storeIo === false) headers['x-fal-store-io'] = '0';
  return Object.freeze(headers);
}

/** fal's start deadline for our request deadline: whole seconds, rounded up. */
export function startTimeoutSeconds(requestTimeoutMs: number): number {
  return Math.max(1, Math.ceil(requestTimeoutMs / 1000));
}

/** Sends `input` to `endpoint`'s queue with the client made for `call` (phase `submit`). */
export async function submitOnce(client: FalClient, call: FalCall, endpoint: string, input: Record<string, unknown>, webhookUrl: string | undefined, headers: Readonly<Record<string, string>> = {}): Promise<Submitted> {
  // The input is handed over with a null prototype: the client then sends it
  // as it is instead of walking it for files to upload (storage.transformInput,
  // which only descends into objects whose prototype is Object.prototype). Our
  // inputs are JSON data (files reach fal through `upload` first), so the walk
  // finds nothing, yet its async frames, one per key, live as long as the
  // submit and are promoted into the old generation: measured with V8's
  // sampling heap profiler over 2,000 waiting jobs, 6.7 KB per job of old
  // space garbage that RSS carries until a full collection.
  const answer: unknown = await client.queue.submit(endpoint, { input: Object.assign(Object.create(null), input), webhookUrl, headers, abortSignal: call.signal });
  const id = (answer as { request_id?: unknown } | null)?.request_id;
  if (typeof id !== 'string' || id.length === 0) {
    throw new FalCallError('fal submit: no request_id in the answer', { ...call.errorInit('bad_response'), ambiguous: true, strayIds: [...call.seenIds] });
  }
  return { falRequestId: id, strayIds: call.seenIds.filter((s) => s !== id) };
}

/**
 * A failed submit, with what it means for billing: `ambiguous` when fal may
 * have made a job whose id we never saw (the request may have gone out and
 * no readable answer came back, or fal answered 500, 502 or 504), and every
 * id fal named on the way as a stray.
 */
export function submitFailure(err: FalCallError, call: FalCall): FalCallError {
  const last = call.last;
  const ambiguous =
    err.kind === 'aborted' ||
    err.kind === 'bad_response' ||
    (err.kind === 'network' && !(last && 'failed' in last && last.failed === 'never_sent')) ||
    (err.kind === 'http' && (err.status === 500 || err.status === 502 || err.status === 504));
  // On an ambiguous answer the id it named may be the job's own: it is the
  // error's `falRequestId`, and the strays are the ids of earlier attempts.
  const own = ambiguous && err.falRequestId && call.seenIds.includes(err.falRequestId) ? err.falRequestId : undefined;
  return new FalCallError(err.message, {
    phase: 'submit',
    kind: err.kind,
    status: err.status,
    body: err.body,
    falRequestId: own,
    retryAfterS: err.retryAfterS,
    errorType: err.errorType,
    retryable: err.retryable,
    billableUnits: err.billableUnits,
    ambiguous,
    strayIds: call.seenIds.filter((id) => id !== own),
    cause: err.cause,
  });
}
