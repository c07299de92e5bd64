/**
 * How an emulated fal call answers before any job exists: the key check, and
 * the armed call faults (an HTTP error, a delay, a reset connection, a body
 * that is not JSON), shared by the queue, the CDN and the platform API.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx } from './context.js';
import type { ArmedFault } from './faults.js';
import { withErrorHints } from './errors.js';
import { headerValue, sendBytes, sendJson } from './http.js';

export const CALL_FAULTS = ['http_error', 'delay', 'reset', 'non_json'] as const;

const DEFAULT_DETAIL: Record<number, string> = {
  400: 'Bad Request (emulated)',
  401: 'Authentication failed (emulated)',
  403: 'Forbidden (emulated)',
  404: 'Not Found (emulated)',
  429: 'Rate limit exceeded (emulated)',
  500: 'Internal Server Error (emulated)',
  502: 'Bad Gateway (emulated)',
  503: 'Service Unavailable (emulated)',
  504: 'Gateway Timeout (emulated)',
};

export function defaultDetail(status: number): unknown {
  if (status === 422) return [{ loc: ['body', 'prompt'], msg: 'Emulated validation error', type: 'value_error' }];
  return DEFAULT_DETAIL[status] ?? `Emulated HTTP ${status}`;
}

/**
 * Answers a call fault. Returns false for a pure delay (the caller then
 * carries on normally); true when the fault answered (or killed) the call.
 */
export async function answerFault(ctx: Ctx, req: IncomingMessage, res: ServerResponse, fault: ArmedFault, requestId: string): Promise<boolean> {
  if (fault.delay_ms) await ctx.sleep(fault.delay_ms);
  const headers: Record<string, string> = { 'x-fal-request-id': requestId, ...(fault.headers ?? {}) };
  switch (fault.kind) {
    case 'delay':
      return false;
    case 'reset':
      req.socket.destroy();
      return true;
    case 'non_json':
      sendBytes(
        res,
        fault.status ?? 200,
        fault.body ?? '<html><body><h1>emulated non-JSON response</h1></body></html>',
        'text/html; charset=utf-8',
        headers,
      );
      return true;
    default: {
      const status = fault.status ?? 500;
      if (fault.retry_after !== undefined) headers['retry-after'] = String(fault.retry_after);
      else if (status === 429) headers['retry-after'] = '1';
      const body: unknown = { detail: fault.detail ?? defaultDetail(status) };
      if (status < 500 && fault.error_type === undefined && fault.retryable === undefined) {
        sendJson(res, status, body, headers);
        return true;
      }
      const hinted = withErrorHints(status, body, { errorType: fault.error_type, retryable: fault.retryable });
      sendJson(res, status, hinted.body, { ...hinted.headers, ...headers });
      return true;
    }
  }
}

/** `Authorization: Key <anything>`, or exactly the configured key. */
export function authorize(ctx: Ctx, req: IncomingMessage, res: ServerResponse, requestId: string): boolean {
  const header = headerValue(req, 'authorization') ?? '';
  const m = /^Key\s+(\S.*)$/.exec(header.trim());
  const key = m?.[1]?.trim();
  if (!key) {
    sendJson(
      res,
      401,
      { detail: "Authentication is required to access this application. Send 'Authorization: Key <FAL_KEY>'." },
      { 'x-fal-request-id': requestId },
    );
    return false;
  }
  if (ctx.options.emulatorKey !== undefined && key !== ctx.options.emulatorKey) {
    sendJson(res, 401, { detail: 'No user found for Key ID and Secret' }, { 'x-fal-request-id': requestId });
    return false;
  }
  return true;
}
