import type { Request, Response } from 'express';
import type { ModelRegistry } from '../../models/registry.js';
import { normalizeRequest, type CanonicalRequest } from '../../images/normalize.js';
import type { GenerateContext, GenerateOutcome, ImageService } from '../../images/generate.js';
import { completedEvents, progressEvent } from '../../images/stream-events.js';
import { invalidRequest } from '../../errors.js';
import type { Principal } from '../auth.js';
import { parseIdempotencyKey, withIdempotency, type IdempotencyOptions, type IdempotencyScope } from '../idempotency.js';
import { sseStream } from '../sse.js';
import { sendImagesJson } from '../images-json.js';
import { requestController } from '../waiting-requests.js';
import { prepareEdit, type EditInputsDeps } from '../../images/edit-inputs.js';

export interface ImagesRouteDeps {
  registry: ModelRegistry;
  images: ImageService;
  publicBaseUrl: string | undefined;
  idempotency: IdempotencyOptions;
  /** Interval of keep-alive comments on a streamed answer. */
  streamKeepAliveMs: number;
  /** STRICT_PARAMS: refuse the hints a model does not act on. */
  strictParams: boolean;
  /** Edits: input checks and uploads (absent: a body naming an input image is refused by the generation schema). */
  edits?: EditInputsDeps | undefined;
}

/** The origin the caller reached us on, unless PUBLIC_BASE_URL says otherwise. */
export function publicBase(req: Request, configured: string | undefined): string {
  return configured ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}

/** What the answer says about its cost and its fal jobs, beside the body. */
function usageHeaders(outcome: GenerateOutcome): Record<string, string> {
  return { 'x-usage-cost-usd': outcome.charge.usd, 'x-usage-credits': String(outcome.charge.credits), 'x-fal-request-id': outcome.falRequestIds.join(', ') };
}

/**
 * Parse → the use case → the answer. Failures are thrown to the app's one
 * error handler, which answers in JSON or, once a stream started, as an
 * `error` event. A generation that names an input image (`image_url`, as
 * aimlapi takes it) is an edit of the model's image.
 */
export function imagesHandler(deps: ImagesRouteDeps): (req: Request, res: Response) => Promise<void> {
  return async (req, res) => {
    const idemKey = parseIdempotencyKey(req.get('idempotency-key'));
    // Validation comes first: a request that fails it is never stored under its key.
    const body = req.body as unknown;
    if (isEditBody(body) && deps.edits) {
      // The uploads and URL checks before the answer stop with the caller too.
      const controller = requestController(res);
      const canonical = await prepareEdit(deps.edits, { body }, { strictParams: deps.strictParams }, controller.signal);
      return answerRequest(deps, req, res, canonical, idemKey, body, controller);
    }
    // Returned, not awaited: this frame ends here, and only the answer's waits on fal (src/http/waiting-requests.ts).
    return answerRequest(deps, req, res, normalizeRequest(deps.registry, body, { strictParams: deps.strictParams }), idemKey, body);
  };
}

function isEditBody(body: unknown): body is Record<string, unknown> {
  return typeof body === 'object' && body !== null && !Array.isArray(body) && (Object.hasOwn(body, 'image_url') || Object.hasOwn(body, 'mask_url'));
}

/** The answer to a canonical request, generation or edit: JSON (replayed under an Idempotency-Key) or a stream. `idemBody`: what a replay must match. */
export async function answerRequest(
  deps: ImagesRouteDeps,
  req: Request,
  res: Response,
  canonical: CanonicalRequest,
  idemKey: string | undefined,
  idemBody: unknown,
  controller: AbortController = requestController(res),
): Promise<void> {
  // Set before anything is written, so a JSON answer, a stream and an error all declare the ignored hints.
  if (canonical.ignoredParams.length > 0) res.set('x-ignored-params', canonical.ignoredParams.join(', '));
  res.locals.model = canonical.model.id;
  res.locals.prompt = canonical.falInput['prompt'];
  const ctx: GenerateContext = {
    requestId: res.locals.requestId as string,
    clientRequestId: res.locals.clientRequestId as string | undefined,
    keyId: (res.locals.principal as Principal).keyId,
    controller,
    publicBaseUrl: publicBase(req, deps.publicBaseUrl),
    idempotencyKey: idemKey,
  };
  if (canonical.stream) {
    // A replay would have to re-send a stream whose progress is gone; a caller who needs idempotency gets it without streaming.
    if (idemKey !== undefined) throw invalidRequest('Idempotency-Key cannot be combined with stream: true (a stream cannot be replayed); send one or the other.', 'Idempotency-Key', 'idempotency_not_streamable');
    await streamImages(deps.images, canonical, ctx, res, deps.streamKeepAliveMs);
    return;
  }
  if (idemKey === undefined) {
    const outcome = await deps.images.generate(canonical, ctx);
    res.locals.falRequestId = outcome.falRequestIds[0];
    await sendImagesJson(req, res, 200, usageHeaders(outcome), outcome.body);
    return;
  }
  const principal = res.locals.principal as Principal;
  const recovery = deps.idempotency.recovery;
  const scope: IdempotencyScope = {
    keyId: principal.keyId,
    idemKey,
    requestId: ctx.requestId,
    body: idemBody,
    callerGone: () => res.destroyed,
    recover: recovery && ((claim) => recovery.recover(claim, canonical, ctx.publicBaseUrl)),
    okHeaders: usageHeaders,
    signal: ctx.controller?.signal,
  };
  const reply = await withIdempotency(deps.idempotency, scope, async (run) => {
    const outcome = await deps.images.generate(canonical, { ...ctx, onSubmitted: () => (run.submitted = true) });
    res.locals.falRequestId = outcome.falRequestIds[0];
    return { status: 200, headers: usageHeaders(outcome), body: outcome.body };
  });
  await sendImagesJson(req, res, reply.status, reply.headers, reply.body);
}

/**
 * `stream: true`: progress while fal works, then one completed event per
 * image. The images and their charge come from the same settled outcome as
 * a JSON answer, so a streamed request is billed exactly like one; the
 * usage headers cannot follow a started body, so usage rides in the events.
 */
async function streamImages(images: ImageService, canonical: CanonicalRequest, ctx: GenerateContext, res: Response, keepAliveMs: number): Promise<void> {
  const sse = sseStream(res, { keepAliveMs });
  ctx.onProgress = (p) => sse.send('image_generation.progress', progressEvent(p, Date.now()));
  const outcome = await images.generate(canonical, ctx);
  res.locals.falRequestId = outcome.falRequestIds[0];
  for (const event of completedEvents(canonical, outcome.body)) sse.send('image_generation.completed', event);
  sse.end();
}
