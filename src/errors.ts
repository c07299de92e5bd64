/**
 * The error taxonomy. Every failure the service answers with is an `ApiError`
 * and is written by `errorResponse()` alone, so the wire shape
 * `{"error":{"message","type","param","code"}}` (which the OpenAI SDKs parse)
 * and the retry headers live in one place.
 */

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'conflict_error'
  | 'rate_limit_error'
  | 'insufficient_quota'
  | 'upstream_error'
  | 'timeout_error'
  | 'service_unavailable'
  | 'server_error';

export interface ApiErrorOptions {
  type: ErrorType;
  code: string;
  param?: string | null;
  /** Seconds; becomes `retry-after` (and `retry-after-ms`). */
  retryAfterS?: number;
  /**
   * Explicit `x-should-retry`. OpenAI SDKs read it before the status code, so
   * `false` stops them from resending a request whose fal job may already
   * have been billed.
   */
  shouldRetry?: boolean;
  headers?: Record<string, string>;
  cause?: unknown;
}

export class ApiError extends Error {
  readonly status: number;
  readonly type: ErrorType;
  readonly code: string;
  readonly param: string | null;
  readonly retryAfterS: number | undefined;
  shouldRetry: boolean | undefined;
  readonly headers: Record<string, string>;

  constructor(status: number, message: string, opts: ApiErrorOptions) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ApiError';
    this.status = status;
    this.type = opts.type;
    this.code = opts.code;
    this.param = opts.param ?? null;
    this.retryAfterS = opts.retryAfterS;
    this.shouldRetry = opts.shouldRetry;
    this.headers = opts.headers ?? {};
  }
}

/** 400 naming the top-level field the caller sent. */
export function invalidRequest(message: string, param: string | null, code = 'invalid_value'): ApiError {
  return new ApiError(400, message, { type: 'invalid_request_error', code, param });
}

export function unauthorized(message = 'Missing or invalid API key. Send "Authorization: Bearer <key>".'): ApiError {
  return new ApiError(401, message, { type: 'authentication_error', code: 'invalid_api_key' });
}

export function forbidden(message = 'This key is not allowed to use this route.'): ApiError {
  return new ApiError(403, message, { type: 'permission_error', code: 'permission_denied' });
}

export function notFound(message: string, code = 'not_found', param: string | null = null): ApiError {
  return new ApiError(404, message, { type: 'invalid_request_error', code, param });
}

/** Models named in a 404; more are summed up, and GET /v1/models lists them all. */
const MODELS_NAMED_MAX = 20;

/**
 * Model names are matched exactly, so a client's default (`dall-e-3`) is
 * refused; the message names what is served so the caller can pick one.
 */
export function modelNotFound(model: unknown, served: readonly string[] = []): ApiError {
  const shown = typeof model === 'string' ? JSON.stringify(model.slice(0, 200)) : 'missing';
  const names = served.slice(0, MODELS_NAMED_MAX).join(', ') + (served.length > MODELS_NAMED_MAX ? ` and ${served.length - MODELS_NAMED_MAX} more` : '');
  const which = served.length > 0 ? ` This service serves: ${names} (GET /v1/models lists them).` : ' GET /v1/models lists the models this service serves.';
  return notFound(`The model ${shown} does not exist.${which}`, 'model_not_found', 'model');
}

export function rateLimited(message: string, retryAfterS: number, code = 'rate_limit_exceeded', headers?: Record<string, string>): ApiError {
  return new ApiError(429, message, { type: 'rate_limit_error', code, retryAfterS, headers });
}

export function insufficientQuota(message: string): ApiError {
  return new ApiError(429, message, { type: 'insufficient_quota', code: 'insufficient_quota', shouldRetry: false });
}

export function upstreamError(message = 'The image provider failed. Please try again later.', opts: Partial<ApiErrorOptions> = {}): ApiError {
  return new ApiError(502, message, { type: 'upstream_error', code: 'upstream_error', ...opts });
}

export function upstreamTimeout(message = 'The image provider did not finish before the deadline.', opts: Partial<ApiErrorOptions> = {}): ApiError {
  return new ApiError(504, message, { type: 'timeout_error', code: 'upstream_timeout', ...opts });
}

export function serviceUnavailable(message: string, retryAfterS?: number, code = 'service_unavailable'): ApiError {
  return new ApiError(503, message, { type: 'service_unavailable', code, retryAfterS });
}

/**
 * The usage or key store cannot be reached under a route that only reads or
 * manages them: the caller can retry, so it is a 503 with a retry hint
 * rather than the generic 500. The cause is kept for the log, never sent.
 */
export function storageUnavailable(cause: unknown): ApiError {
  return new ApiError(503, 'Usage and key data are unavailable right now; try again shortly.', {
    type: 'service_unavailable',
    code: 'storage_unavailable',
    retryAfterS: 5,
    cause,
  });
}

const INTERNAL_ERROR_MESSAGE = 'The server had an error while processing your request.';

/**
 * Storage answered but refused what it was given (src/db/errors.ts tells the
 * two apart): a fault of ours, so a generic 500, and the same request would
 * fail the same way, so no retry is invited. The cause is kept for the log.
 */
export function storageFailed(cause: unknown): ApiError {
  return new ApiError(500, INTERNAL_ERROR_MESSAGE, { type: 'server_error', code: 'internal_error', shouldRetry: false, cause });
}

export interface ErrorResponse {
  status: number;
  headers: Record<string, string>;
  body: { error: { message: string; type: ErrorType; param: string | null; code: string } };
}

/**
 * Turns anything thrown into the one wire shape. Unknown errors become a
 * generic 500 whose message never leaks internals (keys, upstream bodies).
 */
export function errorResponse(err: unknown): ErrorResponse {
  const e = err instanceof ApiError
    ? err
    : new ApiError(500, INTERNAL_ERROR_MESSAGE, { type: 'server_error', code: 'internal_error' });
  const headers: Record<string, string> = { ...e.headers };
  if (e.retryAfterS !== undefined) {
    const s = Math.max(0, e.retryAfterS);
    headers['retry-after'] = String(Math.ceil(s));
    headers['retry-after-ms'] = String(Math.round(s * 1000));
  }
  if (e.shouldRetry !== undefined) headers['x-should-retry'] = e.shouldRetry ? 'true' : 'false';
  return {
    status: e.status,
    headers,
    body: { error: { message: e.message, type: e.type, param: e.param, code: e.code } },
  };
}

/**
 * No answer may be written: the request now belongs to another process,
 * which settles it as one whose caller got no answer (src/metering/leases.ts).
 * The error writer closes the connection without a response.
 */
export class AnswerWithheld extends Error {
  constructor(readonly requestId: string, readonly owner: string | null) {
    super(`request ${requestId} was taken over by lease ${owner ?? '(none)'}; no answer is written`);
    this.name = 'AnswerWithheld';
  }
}

/**
 * The images fal returned could not be delivered (a download failed, was
 * refused by the outbound policy, or was not base64): thrown by the media
 * port (src/images/ports.ts, `Media`), so the use case closes the request
 * uncharged and answers upstream_media_error.
 */
export class MediaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MediaError';
  }
}

/**
 * Storage failed under a ledger write or read that a request's ports make
 * (`RequestLedger`, `Settlement`): `unavailable` when storage cannot be
 * reached or take work right now, so a retry may succeed; otherwise it
 * answered and refused. The adapters sort the driver's error, which is the
 * cause (src/metering/request-ledger.ts over src/db/errors.ts), so the use
 * case never reads a driver's error.
 */
export class StorageError extends Error {
  constructor(readonly unavailable: boolean, cause: unknown) {
    super(unavailable ? 'storage unavailable' : 'storage refused the statement', { cause });
    this.name = 'StorageError';
  }
}
