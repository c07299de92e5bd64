import { Router, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import type { ModelRegistry } from '../../models/registry.js';
import { normalizeRequest, type CanonicalRequest } from '../../images/normalize.js';
import type { CallerLink, CallerWatcher, GenerateContext, ImageService } from '../../images/generate.js';
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
  /** The app's error handler (one error shape), for answers sent after the route handler returned. */
  onError: (err: unknown, req: Request, res: Response) => void;
}

/** The origin the caller reached us on, unless PUBLIC_BASE_URL says otherwise. */
export function publicBase(req: Request, configured: string | undefined): string {
  return configured ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}

/**
 * The caller's end of a request: gone when the response closes before it
 * finished. One small record per request, told by one listener function
 * shared by all requests (an AbortController with its signal's listener maps
 * was most of what a waiting caller cost).
 */
class ResponseCaller implements CallerLink {
  goneReason: unknown = undefined;
  private watcher: CallerWatcher | undefined;

  watch(watcher: CallerWatcher | undefined): void {
    this.watcher = watcher;
  }

  gone(reason: unknown): void {
    if (this.goneReason !== undefined) return;
    this.goneReason = reason;
    const w = this.watcher;
    this.watcher = undefined;
    w?.callerGone(reason);
  }
}

/** Goes when the caller disconnects before we answered. */
export function callerLink(res: Response): CallerLink {
  const link = new ResponseCaller();
  (res.locals as { caller?: unknown }).caller = link;
  res.on('close', onResponseClose);
  return link;
}

function onResponseClose(this: Response): void {
  if (!this.writableFinished) ((this.locals as { caller?: unknown }).caller as ResponseCaller | undefined)?.gone(new Error('caller went away'));
}

/** The image route has no path parameters. */
const NO_PARAMS: Record<string, string> = Object.freeze({}) as Record<string, string>;

export function imagesRouter(deps: ImagesRouteDeps): Router {
  const router = Router();
  router.post('/v1/images/generations', (req, res) => {
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
      callerSignal: callerLink(res),
      publicBaseUrl: publicBase(req, deps.publicBaseUrl),
      idempotencyKey: idemKey,
      onSubmitted: run
        ? () => {
            run.submitted = true;
          }
        : undefined,
      onProgress: undefined,
    });
    if (!canonical.stream && idemKey === undefined) {
      // The common request, which may wait minutes for fal, thousands at
      // once: the handler returns at once and the answer (or error) is sent
      // from the job's own promise. Returning no promise lets Express drop
      // its dispatch state for the request (its `next` chain, which it keeps
      // for as long as a returned promise is pending), so the error goes to
      // the app's error handler directly rather than through `next`.
      const fail = (err: unknown): void => {
        try {
          deps.onError(err, req, res);
        } catch (failed) {
          // Nothing may escape as an unhandled rejection (it would end the process): the answer is lost, the socket goes.
          deps.logger?.error({ err: failed, request_id: requestId }, 'could not send the error answer');
          res.destroy();
        }
      };
      // One reaction while the job waits; the send's own failure is caught once it starts.
      deps.images.generate(canonical, context()).then((outcome) => {
        res.locals.falRequestId = outcome.falRequestId;
        // b64_json images go to the socket as the Buffers fal sent them in (images-json.ts).
        sendImagesJson(req, res, 200, outcome.headers, outcome.body).catch(fail);
      }, fail);
      // What Express leaves on the request that nothing reads from here on,
      // while the request lives as long as its job: its dispatch chain
      // (req.next), the route's params and the parsed URL it caches (which
      // req.path parses again if anyone asks).
      req.next = undefined;
      req.params = NO_PARAMS;
      (req as { _parsedUrl?: unknown })._parsedUrl = undefined;
      return undefined;
    }
    return handleRest(canonical, idemKey, context, req, res, deps);
  });
  return router;
}

/** Streaming and idempotent requests: fewer, and each with more to keep, so they stay one async function. */
async function handleRest(
  canonical: CanonicalRequest,
  idemKey: string | undefined,
  context: (run?: { submitted: boolean }) => GenerateContext,
  req: Request,
  res: Response,
  deps: ImagesRouteDeps,
): Promise<void> {
  if (canonical.stream) {
    if (idemKey !== undefined) {
      // A replay would have to re-send a stream whose progress is gone; a
      // caller who needs idempotency gets it without streaming.
      throw invalidRequest('Idempotency-Key cannot be combined with stream: true (a stream cannot be replayed); send one or the other.', 'Idempotency-Key', 'idempotency_not_streamable');
    }
    await streamImages(canonical, context(), res, deps);
    return;
  }
  const principal = res.locals.principal as Principal;
  const generate = async (run: { submitted: boolean }): Promise<Reply> => {
    const outcome = await deps.images.generate(canonical, context(run));
    res.locals.falRequestId = outcome.falRequestId;
    return { status: 200, headers: outcome.headers, body: outcome.body };
  };
  const reply = await withIdempotency(deps.idempotency, { keyId: principal.keyId, idemKey: idemKey!, requestId: res.locals.requestId as string, body: req.body }, generate);
  await sendImagesJson(req, res, reply.status, reply.headers, reply.body);
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
