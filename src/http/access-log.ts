import type { RequestHandler } from 'express';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';

/**
 * One line per request, written when the response ends (or the caller
 * leaves). Handlers add `falRequestId` and `model` to `res.locals`.
 */
export function accessLog(logger: Logger, metrics?: Metrics): RequestHandler {
  return (req, res, next) => {
    const started = process.hrtime.bigint();
    let logged = false;
    const done = () => {
      if (logged) return;
      logged = true;
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const principal = res.locals.principal as { keyId?: string } | undefined;
      const route = (req.route?.path as string | undefined) ?? (res.statusCode === 404 ? 'unmatched' : req.path.slice(0, 100));
      const status = res.headersSent ? res.statusCode : 499;
      metrics?.httpRequests.inc({ route, model: (res.locals.model as string | undefined) ?? '', status: String(status) });
      metrics?.httpDuration.observe({ route }, ms / 1000);
      logger.info(
        {
          request_id: res.locals.requestId,
          fal_request_id: res.locals.falRequestId,
          key_id: principal?.keyId,
          model: res.locals.model,
          method: req.method,
          route,
          status,
          duration_ms: Math.round(ms * 10) / 10,
          error_code: res.locals.errorCode,
        },
        'request',
      );
    };
    res.on('finish', done);
    res.on('close', done);
    next();
  };
}
