import type { RequestHandler } from 'express';
import { ApiError, rateLimited } from '../errors.js';
import type { Metrics } from '../metrics.js';

/**
 * At most `max` image requests at once in this process. Past that we answer
 * 429 at once instead of queueing: memory stays bounded and a router can send
 * the request to another replica.
 */
export function inFlightLimit(max: number, metrics?: Metrics): RequestHandler {
  let current = 0;
  // Shared by every request (no closure per request): Node emits 'close' once
  // per response, whether it was sent or the caller left.
  const release = () => {
    current--;
  };
  return (_req, res, next) => {
    if (current >= max) {
      metrics?.refusals.inc({ reason: 'in_flight' });
      throw rateLimited(`This server is at its limit of ${max} requests in flight. Retry shortly.`, 1, 'rate_limit_exceeded');
    }
    current++;
    res.on('close', release);
    next();
  };
}

/** Once shutdown begins, requests on kept-alive connections are turned away. */
export function refuseWhenShuttingDown(isShuttingDown: () => boolean): RequestHandler {
  return (_req, res, next) => {
    if (isShuttingDown()) {
      res.setHeader('connection', 'close');
      throw new ApiError(503, 'The server is shutting down; retry on another instance.', { type: 'service_unavailable', code: 'shutting_down', retryAfterS: 1 });
    }
    next();
  };
}
