import express, { type ErrorRequestHandler, type Express } from 'express';
import type { Logger } from 'pino';
import { errorResponse, notFound, ApiError } from './errors.js';
import { requestId } from './http/request-id.js';
import { accessLog } from './http/access-log.js';
import { requireKey, type Authenticate } from './http/auth.js';
import { jsonBody, bodyErrors } from './http/body.js';
import { imagesRouter } from './http/routes/images.js';
import { filesRouter } from './http/routes/files.js';
import { healthRouter, type ReadinessCheck } from './http/routes/health.js';
import type { ModelRegistry } from './models/registry.js';
import type { ImageService } from './images/generate.js';
import type { Media } from './images/media.js';
import type { IdempotencyOptions } from './http/idempotency.js';

export interface AppDeps {
  logger: Logger;
  registry: ModelRegistry;
  images: ImageService;
  media: Media;
  authenticate: Authenticate;
  readiness: ReadinessCheck[];
  maxBodyBytes: number;
  publicBaseUrl: string | undefined;
  idempotency: IdempotencyOptions;
  isShuttingDown?: () => boolean;
}

/**
 * Wiring and the whole error policy on one screen. Order matters: request id
 * first (every response carries it), then auth, then the body, so an
 * unauthenticated caller cannot make us parse a megabyte.
 */
export function createApp(deps: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  app.set('query parser', 'simple');

  app.use(requestId());
  app.use(accessLog(deps.logger));
  app.use(healthRouter(deps.readiness, deps.isShuttingDown ?? (() => false)));
  app.use(filesRouter(deps.media));

  const auth = requireKey(deps.authenticate);
  app.post('/v1/images/generations', auth, ...jsonBody(deps.maxBodyBytes));
  app.use(imagesRouter({ registry: deps.registry, images: deps.images, publicBaseUrl: deps.publicBaseUrl, idempotency: deps.idempotency }));

  app.use((req) => {
    throw notFound(`Unknown route: ${req.method} ${req.path.slice(0, 200)}`, 'unknown_route');
  });
  app.use(bodyErrors);
  const onError: ErrorRequestHandler = (err, _req, res, _next) => {
    const out = errorResponse(err);
    res.locals.errorCode = out.body.error.code;
    if (!(err instanceof ApiError) || out.status >= 500) {
      deps.logger.error({ err, request_id: res.locals.requestId }, 'request failed');
    }
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.status(out.status).set(out.headers).json(out.body);
  };
  app.use(onError);
  return app;
}
