import express, { type ErrorRequestHandler, type Express } from 'express';
import type { Logger } from 'pino';
import { fixedFieldsLogger } from './logging.js';
import { notFound } from './errors.js';
import { createErrorWriter } from './http/error-writer.js';
import { requestId } from './http/request-id.js';
import { accessLog } from './http/access-log.js';
import { requireAdmin, requireKey, type Authenticate } from './http/auth.js';
import { jsonBody, bodyErrors } from './http/body.js';
import { imagesHandler, usageHeaders } from './http/routes/images.js';
import { editBody, editsHandler, generationsOrEdits } from './http/routes/edits.js';
import { imageStreams } from './http/image-stream.js';
import { sendImagesAsBuffers } from './http/images-json.js';
import type { EditInputsDeps } from './images/edit-inputs.js';
import { filesRouter } from './http/routes/files.js';
import { healthRouter, type ReadinessCheck } from './http/routes/health.js';
import { adminKeysRouter } from './http/routes/admin-keys.js';
import { usageRouter } from './http/routes/usage.js';
import type { KeysStore } from './metering/keys-store.js';
import type { Reports } from './metering/reports.js';
import type { ModelRegistry } from './models/registry.js';
import type { ImageService } from './images/generate.js';
import type { Media } from './images/media.js';
import { idempotencyKeyHeader, replays, type IdempotencyOptions } from './http/idempotency.js';
import { rateLimit, type RateLimitOptions } from './http/rate-limit.js';
import { abortWhenCallerLeaves, addSecurityHeadersOnWrite, answerLater } from './http/waiting-requests.js';
import cors from 'cors';
import type { Metrics } from './metrics.js';
import { inFlightLimit, refuseWhenShuttingDown } from './http/backpressure.js';
import { modelsRouter } from './http/routes/models.js';
import { falWebhookRouter } from './http/routes/fal-webhook.js';
import type { CompletionHub, WebhookVerifier } from './fal/webhooks.js';
import { webRouter } from './http/routes/web.js';
import type { Markup } from './metering/money.js';

export interface AppDeps {
  logger: Logger;
  registry: ModelRegistry;
  images: ImageService;
  media: Media;
  authenticate: Authenticate;
  keys: KeysStore;
  reports: Reports;
  readiness: ReadinessCheck[];
  maxBodyBytes: number;
  publicBaseUrl: string | undefined;
  idempotency: IdempotencyOptions;
  isShuttingDown?: () => boolean;
  metrics: Metrics;
  /** fal job callbacks, when FAL_WEBHOOKS is on. */
  falWebhooks?: { verifier: WebhookVerifier; hub: CompletionHub };
  /** PRICE_MARKUP, shown with each model's pricing. */
  markup: Markup;
  maxInFlight: number;
  /** Origins allowed by CORS; empty = CORS off. */
  corsOrigins: string[];
  /** LOG_PROMPTS: the access log line of an image request carries its prompt. */
  logPrompts?: boolean;
  /** Per-key requests-per-minute limits on the image route. */
  rateLimit: RateLimitOptions;
  /** STREAM_KEEPALIVE_MS: keep-alive comments on streamed image answers; default 15 s. */
  streamKeepAliveMs?: number;
  /** STRICT_PARAMS: hints the model does not act on are refused instead of ignored. */
  strictParams?: boolean;
  /** Image edits (POST /v1/images/edits, image_url on a generation); absent = not served. */
  edits?: { inputs: EditInputsDeps; maxFileBytes: number } | undefined;
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

  const isShuttingDown = deps.isShuttingDown ?? (() => false);
  const writeError = createErrorWriter(deps.logger);
  app.use(requestId());
  app.use(accessLog(fixedFieldsLogger(deps.logger), deps.metrics, { logPrompts: deps.logPrompts ?? false }));
  // Strict defaults everywhere, on every answer of the app as it is written; the HTML pages
  // relax two directives for themselves (routes/web.ts).
  addSecurityHeadersOnWrite(app.response);
  // Images answers' base64 goes to the socket as the Buffers fal sent, never a string.
  sendImagesAsBuffers(app.response);
  if (deps.corsOrigins.length > 0) {
    app.use(cors({ origin: deps.corsOrigins, allowedHeaders: ['authorization', 'content-type', 'idempotency-key', 'x-request-id'], exposedHeaders: ['x-request-id', 'x-usage-cost-usd', 'x-usage-credits', 'x-ignored-params', 'retry-after'] }));
  }
  const auth = requireKey(deps.authenticate);
  const refuseWhenStopping = refuseWhenShuttingDown(isShuttingDown);
  // The image route is the one callers wait on, so it comes first: none of the
  // routers below (health, metrics, fal callbacks, files, pages) can match a
  // POST to it, and walking past them cost every image request. Its chain is
  // what it met before: the shutdown refusal, then auth, limits, body.
  // Limited before the body is read: a caller over its limit costs us no parsing.
  // After the body parser, before the handler: the Idempotency-Key header's check, and the request's one AbortController.
  const imagesDeps = {
    registry: deps.registry,
    images: deps.images,
    publicBaseUrl: deps.publicBaseUrl,
    replays: replays(deps.idempotency, usageHeaders),
    streams: imageStreams({ images: deps.images, keepAliveMs: deps.streamKeepAliveMs ?? 15_000, logger: deps.logger }),
    strictParams: deps.strictParams ?? false,
  };
  const limits = [refuseWhenStopping, auth, rateLimit(deps.rateLimit), inFlightLimit(deps.maxInFlight, deps.metrics)];
  const beforeAnswer = [idempotencyKeyHeader, abortWhenCallerLeaves];
  const edits = deps.edits && editsHandler({ ...imagesDeps, edits: deps.edits.inputs, maxFileBytes: deps.edits.maxFileBytes });
  const generations = edits ? generationsOrEdits(edits, imagesHandler(imagesDeps)) : imagesHandler(imagesDeps);
  app.post('/v1/images/generations', ...limits, ...jsonBody(deps.maxBodyBytes), ...beforeAnswer, answerLater(generations, writeError));
  if (edits) app.post('/v1/images/edits', ...limits, ...editBody(deps.maxBodyBytes), ...beforeAnswer, answerLater(edits, writeError));
  app.use(healthRouter(deps.readiness, isShuttingDown));
  app.get('/metrics', async (_req, res) => {
    res.setHeader('content-type', deps.metrics.registry.contentType);
    res.send(await deps.metrics.registry.metrics());
  });
  // Before the shutdown refusal: requests still draining need their callbacks.
  if (deps.falWebhooks) app.use(falWebhookRouter({ ...deps.falWebhooks, logger: deps.logger, maxBytes: 128 * 1024 * 1024 }));
  app.use(refuseWhenStopping);
  app.use(filesRouter(deps.media));
  app.use(webRouter());

  // Every /v1/admin path, unknown ones included, answers 403 to a non-admin
  // before anything else, so the admin surface cannot be mapped without a key.
  app.use('/v1/models', auth);
  app.use(modelsRouter({ registry: deps.registry, markup: deps.markup }));

  app.use('/v1/admin', auth, requireAdmin());
  app.get('/v1/usage', auth);
  app.use(adminKeysRouter({ keys: deps.keys, maxBodyBytes: deps.maxBodyBytes }));
  app.use(usageRouter({ reports: deps.reports }));

  app.use((req) => {
    throw notFound(`Unknown route: ${req.method} ${req.path.slice(0, 200)}`, 'unknown_route');
  });
  app.use(bodyErrors);
  // Express 5 brings every thrown or rejected error here; the writer answers in the response's own terms.
  const onError: ErrorRequestHandler = (err, _req, res, _next) => writeError(err, res);
  app.use(onError);
  return app;
}
