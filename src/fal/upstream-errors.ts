import { ApiError, invalidRequest, rateLimited, upstreamError, upstreamTimeout } from '../errors.js';
import type { FalCallError } from './errors.js';

/**
 * A failed fal job as the caller is told it (the gateway's `callerError`,
 * src/images/ports.ts): fal's statuses mapped onto ours, never forwarded: fal's 401 is our outage
 * (502), not the caller's bad key, and fal's 422 is the caller's bad input
 * (400) named by the field the caller sent.
 */

export interface MapContext {
  /** A job exists (or may exist) at fal: a retry would start another billable job. */
  submitted: boolean;
  /** fal input field → the top-level field the caller used for it. */
  fieldOrigins: Record<string, string>;
  /** Why our own signal fired, when it did. */
  abortReason?: 'deadline' | 'client_gone' | 'shutdown';
}

interface FalDetail {
  loc?: unknown;
  msg?: unknown;
}

/** fal's `detail` can echo the whole input; we keep only field names and short messages. */
function firstDetail(body: unknown): { field: string | null; msg: string } | null {
  const detail = (body as { detail?: unknown } | undefined)?.detail;
  if (typeof detail === 'string') return { field: null, msg: detail.slice(0, 300) };
  if (!Array.isArray(detail) || detail.length === 0) return null;
  const d = detail[0] as FalDetail;
  const loc = Array.isArray(d.loc) ? d.loc.filter((x) => typeof x === 'string' || typeof x === 'number') : [];
  const field = loc[0] === 'body' ? loc[1] : loc[0];
  return {
    field: typeof field === 'string' ? field : null,
    msg: typeof d.msg === 'string' ? d.msg.slice(0, 300) : 'invalid value',
  };
}

/** fal's error type for a prompt or image its content checker refused (https://fal.ai/docs/documentation/model-apis/errors). */
const CONTENT_POLICY = 'content_policy_violation';

/** Statuses of ours an OpenAI SDK resends by itself when told nothing (REFERENCE §2). */
const SDK_RETRIES = (status: number) => status === 408 || status === 409 || status === 429 || status >= 500;

/** The flagged categories of a content-policy refusal, short words only. */
function contentCategories(body: unknown): string[] {
  const detail = (body as { detail?: unknown } | undefined)?.detail;
  const first = Array.isArray(detail) ? (detail[0] as { categories?: unknown } | undefined) : (body as { categories?: unknown } | undefined);
  const cats = first?.categories;
  return Array.isArray(cats) ? cats.filter((c): c is string => typeof c === 'string' && /^[\w -]{1,40}$/.test(c)).slice(0, 10) : [];
}

/** The caller's field a content-policy refusal points at (`loc`), `prompt` when fal names none. */
function contentParam(body: unknown, ctx: MapContext): string {
  const field = firstDetail(body)?.field;
  return field ? (ctx.fieldOrigins[field] ?? field) : 'prompt';
}

export function mapFalError(err: FalCallError, ctx: MapContext): ApiError {
  const mapped = map(err, ctx);
  if (ctx.submitted || err.ambiguous) {
    // Once a job may exist at fal, an SDK's automatic retry would start (and
    // bill) another one; tell it not to, whatever the status.
    mapped.shouldRetry = false;
  } else if (err.retryable === true) {
    // fal refused before making a job and says the same request may succeed.
    mapped.shouldRetry = true;
  } else if (err.retryable === false && mapped.status !== 429 && SDK_RETRIES(mapped.status)) {
    // Nothing billed, but fal says a resend fails the same way (our 502 for its 401, say).
    // A 429 keeps its retry-after: fal's hint describes the request, not the rate limit.
    mapped.shouldRetry = false;
  }
  return mapped;
}

function map(err: FalCallError, ctx: MapContext): ApiError {
  if (err.errorType === CONTENT_POLICY) {
    // fal's `detail` echoes the flagged input: only the categories are passed on.
    const categories = contentCategories(err.body);
    const which = categories.length > 0 ? ` (${categories.join(', ')})` : '';
    return new ApiError(400, `The image provider's content checker refused this request${which}. Change the prompt and try again.`, {
      type: 'invalid_request_error',
      code: CONTENT_POLICY,
      param: contentParam(err.body, ctx),
    });
  }
  if (err.kind === 'aborted') {
    if (ctx.abortReason === 'shutdown') return new ApiError(503, 'The service is shutting down.', { type: 'service_unavailable', code: 'shutting_down' });
    return upstreamTimeout();
  }
  if (err.kind === 'network') return upstreamError('Could not reach the image provider.', { code: 'upstream_unreachable' });
  if (err.kind === 'bad_response') return upstreamError('The image provider sent a response this service could not read.', { code: 'upstream_bad_response' });

  const status = err.status ?? 502;
  if (status === 422 || status === 400) {
    const d = firstDetail(err.body);
    if (d) {
      const param = d.field ? (ctx.fieldOrigins[d.field] ?? d.field) : null;
      const where = d.field ? `${param}: ` : '';
      return invalidRequest(`The image provider rejected the request: ${where}${d.msg}`, param, 'upstream_validation_error');
    }
    return upstreamError('The image provider rejected the request.', { code: 'upstream_rejected' });
  }
  if (status === 401 || status === 403) {
    return upstreamError('The image provider refused this service’s credentials.', { code: 'upstream_auth_failed' });
  }
  if (status === 429) {
    return rateLimited('The image provider is rate limiting requests. Retry after the indicated delay.', err.retryAfterS ?? 1, 'upstream_rate_limited');
  }
  if (status === 504) return upstreamTimeout('The image provider timed out.');
  return upstreamError();
}
