/**
 * fal's error hints, written on every error the emulator answers for a job or
 * an injected fault. Two shapes, as fal documents them:
 * - model errors (https://fal.ai/docs/documentation/model-apis/errors): a
 *   `detail` list of `{loc, msg, type, …}`, with `X-Fal-Retryable`;
 * - request errors (https://fal.ai/docs/documentation/model-apis/request-errors):
 *   a flat `{detail: string, error_type}`, the same value in `X-Fal-Error-Type`,
 *   and `X-Fal-Retryable`.
 * Retryability follows fal's queue retry table
 * (https://fal.ai/docs/documentation/serverless/reliability/retries):
 * 503 and 504 are retried, 4xx, 500 and 502 are not; a caller's own start
 * deadline (`X-Fal-Request-Timeout-Type: user`) is not retried either.
 */

/** fal's request error types, by their typical status. */
export const REQUEST_ERROR_TYPES: Readonly<Record<number, string>> = {
  400: 'bad_request',
  499: 'client_cancelled',
  500: 'runner_server_error',
  502: 'runner_incomplete_response',
  503: 'runner_disconnected',
  504: 'request_timeout',
};

export interface ErrorHints {
  errorType?: string | undefined;
  retryable?: boolean | undefined;
  /** `user` for a start deadline the caller set with `X-Fal-Request-Timeout`. */
  timeoutType?: 'user' | undefined;
}

/** The body and headers of an error answer, with fal's hints added. */
export function withErrorHints(status: number, body: unknown, hints: ErrorHints = {}): { body: unknown; headers: Record<string, string> } {
  const headers: Record<string, string> = {};
  if (hints.timeoutType) headers['x-fal-request-timeout-type'] = hints.timeoutType;
  const detail = (body as { detail?: unknown } | null)?.detail;
  if (Array.isArray(detail)) {
    headers['x-fal-retryable'] = String(hints.retryable ?? false);
    return { body, headers };
  }
  const errorType = hints.errorType ?? (body as { error_type?: unknown } | null)?.error_type ?? REQUEST_ERROR_TYPES[status];
  const retryable = hints.retryable ?? ((status === 503 || status === 504) && hints.timeoutType !== 'user');
  headers['x-fal-retryable'] = String(retryable);
  if (typeof errorType !== 'string') return { body, headers };
  headers['x-fal-error-type'] = errorType;
  const out = typeof body === 'object' && body !== null && !Array.isArray(body) ? { ...body, error_type: errorType } : { detail: body, error_type: errorType };
  return { body: out, headers };
}

/** The `error_type` a status body reports for a failed job. */
export function errorTypeOf(status: number, body: unknown): string {
  const b = body as { detail?: unknown; error_type?: unknown } | null;
  if (typeof b?.error_type === 'string') return b.error_type;
  if (Array.isArray(b?.detail)) {
    const first = b.detail[0] as { type?: unknown } | undefined;
    if (typeof first?.type === 'string') return first.type;
  }
  return REQUEST_ERROR_TYPES[status] ?? 'internal_error';
}
