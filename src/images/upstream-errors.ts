import { ApiError, invalidRequest, rateLimited, upstreamError, upstreamTimeout } from '../errors.js';
import type { FalCallError } from '../fal/gateway.js';

/**
 * fal's statuses mapped onto ours, never forwarded: fal's 401 is our outage
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

export function mapFalError(err: FalCallError, ctx: MapContext): ApiError {
  const mapped = map(err, ctx);
  // Once a job may exist at fal, an SDK's automatic retry would start (and
  // bill) another one; tell it not to, whatever the status.
  if (ctx.submitted || err.ambiguous) mapped.shouldRetry = false;
  return mapped;
}

function map(err: FalCallError, ctx: MapContext): ApiError {
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
