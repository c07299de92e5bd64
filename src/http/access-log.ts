import type { RequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';

/**
 * One line per request, written when the response ends (or the caller
 * leaves). Handlers add `falRequestId`, `model` and `prompt` to
 * `res.locals`; the prompt is the caller's content, so it is written only
 * when the operator turned `logPrompts` on.
 */
export function accessLog(logger: Logger, metrics?: Metrics, opts: { logPrompts?: boolean } = {}): RequestHandler {
  // One listener function for every request, called with the response as
  // `this`: a closure per request lived as long as the request (minutes for a
  // waiting image job). 'close' alone suffices: Node emits it once per
  // response, after 'finish' when it was sent, or when the caller left.
  function done(this: Response): void {
    const res = this;
    const req = res.req;
    const ms = performance.now() - (res.locals as { startedAt: number }).startedAt;
    const principal = res.locals.principal as { keyId?: string } | undefined;
    // Never the raw path of an unmatched request: it is whatever the caller
    // typed (a key pasted into a URL, say) and an unbounded metric label.
    const route = (req.route?.path as string | undefined) ?? (res.statusCode !== 404 && ADMIN_PATH.test(req.path) ? '/v1/admin/*' : 'unmatched');
    const status = res.headersSent ? res.statusCode : 499;
    metrics?.httpRequests.inc({ route, model: (res.locals.model as string | undefined) ?? '', status: String(status) });
    metrics?.httpDuration.observe({ route }, ms / 1000);
    logger.info(
      {
        request_id: res.locals.requestId,
        client_request_id: res.locals.clientRequestId,
        fal_request_id: res.locals.falRequestId,
        key_id: principal?.keyId,
        model: res.locals.model,
        method: req.method,
        route,
        status,
        duration_ms: Math.round(ms * 10) / 10,
        error_code: res.locals.errorCode,
        ...(opts.logPrompts && typeof res.locals.prompt === 'string' ? { prompt: res.locals.prompt } : {}),
      },
      'request',
    );
  }
  return (_req, res, next) => {
    // A declared field of RequestLocals (waiting-requests.ts): a new property here would reshape every request's locals.
    (res.locals as { startedAt: number }).startedAt = performance.now();
    res.on('close', done);
    next();
  };
}

const ADMIN_PATH = /^\/v1\/admin(?:\/|$)/;
