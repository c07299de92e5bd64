import type { RequestHandler } from 'express';
import type { Logger } from 'pino';

/**
 * One line per request, written when the response ends (or the caller
 * leaves). Handlers add `falRequestId` and `model` to `res.locals`.
 */
export function accessLog(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const started = process.hrtime.bigint();
    let logged = false;
    const done = () => {
      if (logged) return;
      logged = true;
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const principal = res.locals.principal as { keyId?: string } | undefined;
      logger.info(
        {
          request_id: res.locals.requestId,
          fal_request_id: res.locals.falRequestId,
          key_id: principal?.keyId,
          model: res.locals.model,
          method: req.method,
          route: req.route?.path ?? req.path.slice(0, 200),
          status: res.headersSent ? res.statusCode : 499,
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
