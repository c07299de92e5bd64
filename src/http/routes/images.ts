import { Router, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import type { ModelRegistry } from '../../models/registry.js';
import { normalizeRequest, type CanonicalRequest } from '../../images/normalize.js';
import type { GenerateContext, ImageService } from '../../images/generate.js';
import { completedEvents, progressEvent } from '../../images/stream-events.js';
import { ApiError, errorResponse, invalidRequest } from '../../errors.js';
import type { Principal } from '../auth.js';
import { parseIdempotencyKey, withIdempotency, type IdempotencyOptions, type Reply } from '../idempotency.js';
import { sseStream } from '../sse.js';
import { sendImagesJson } from '../images-json.js';

export interface ImagesRouteDeps {
  registry: ModelRegistry;
  images: ImageService;
  publicBaseUrl: string | undefined;
  idempotency: IdempotencyOptions;
  /** Interval of keep-alive comments on a streamed answer. */
  streamKeepAliveMs: number;
  /** For failures that happen after a stream started, which the error handler never sees. */
  logger?: Logger;
}

/** The origin the caller reached us on, unless PUBLIC_BASE_URL says otherwise. */
export function publicBase(req: Request, configured: string | undefined): string {
  return configured ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}

/** Aborts when the caller disconnects before we answered. */
export function callerGoneSignal(res: Response): AbortSignal {
  const ac = new AbortController();
  (res.locals as Record<symbol, AbortController>)[CALLER_GONE] = ac;
  // One listener function for all requests (a closure each lived as long as the job).
  res.on('close', onResponseClose);
  return ac.signal;
}

const CALLER_GONE = Symbol('callerGone');

function onResponseClose(this: Response): void {
  if (!this.writableFinished) (this.locals as Record<symbol, AbortController>)[CALLER_GONE]?.abort(new Error('caller went away'));
}

export function imagesRouter(deps: ImagesRouteDeps): Router {
  const router = Router();
  router.post('/v1/images/generations', async (req, res) => {
    const idemKey = parseIdempotencyKey(req.get('idempotency-key'));
    // Validation comes first: a request that fails it is never stored under its key.
    const canonical = normalizeRequest(deps.registry, req.body);
    res.locals.model = canonical.model.id;
    res.locals.prompt = canonical.falInput['prompt'];
    const principal = res.locals.principal as Principal;
    const requestId = res.locals.requestId as string;
    // Every field in one literal, in one order: spreading a context into a
    // new object with more keys gave each request's context a hidden class of
    // its own, kept for as long as the job waited.
    const context = (run?: { submitted: boolean }): GenerateContext => ({
      requestId,
      keyId: principal.keyId,
      callerSignal: callerGoneSignal(res),
      publicBaseUrl: publicBase(req, deps.publicBaseUrl),
      idempotencyKey: idemKey,
      onSubmitted: run
        ? () => {
            run.submitted = true;
          }
        : undefined,
      onProgress: undefined,
    });
    if (canonical.stream) {
      if (idemKey !== undefined) {
        // A replay would have to re-send a stream whose progress is gone; a
        // caller who needs idempotency gets it without streaming.
        throw invalidRequest('Idempotency-Key cannot be combined with stream: true (a stream cannot be replayed); send one or the other.', 'Idempotency-Key', 'idempotency_not_streamable');
      }
      await streamImages(canonical, context(), res, deps);
      return;
    }
    const generate = async (run: { submitted: boolean }): Promise<Reply> => {
      const outcome = await deps.images.generate(canonical, context(run));
      res.locals.falRequestId = outcome.falRequestId;
      return { status: 200, headers: outcome.headers, body: outcome.body };
    };
    const reply = idemKey
      ? await withIdempotency(deps.idempotency, { keyId: principal.keyId, idemKey, requestId, body: req.body }, generate)
      : await generate({ submitted: false });
    // b64_json images go to the socket as the Buffers fal sent them in (images-json.ts).
    await sendImagesJson(req, res, reply.status, reply.headers, reply.body);
  });
  return router;
}

/**
 * `stream: true`: progress while fal works, then one completed event per
 * image. The images and their charge come from the same settled outcome as
 * a JSON answer, so a streamed request is billed exactly like one; the
 * usage headers cannot follow a started body, so usage rides in the events.
 */
async function streamImages(canonical: CanonicalRequest, ctx: GenerateContext, res: Response, deps: ImagesRouteDeps): Promise<void> {
  const sse = sseStream(res, { keepAliveMs: deps.streamKeepAliveMs });
  try {
    ctx.onProgress = (p) => sse.send('image_generation.progress', progressEvent(p, Date.now()));
    const outcome = await deps.images.generate(canonical, ctx);
    res.locals.falRequestId = outcome.falRequestId;
    for (const event of completedEvents(canonical, outcome.body)) sse.send('image_generation.completed', event);
  } catch (err) {
    if (!sse.started) throw err;
    const out = errorResponse(err);
    res.locals.errorCode = out.body.error.code;
    if (!(err instanceof ApiError) || out.status >= 500) deps.logger?.error({ err, request_id: ctx.requestId }, 'streamed request failed');
    // The openai SDK throws on any event whose data has an `error` key, with its message.
    sse.send('error', out.body);
  } finally {
    sse.end();
  }
}
