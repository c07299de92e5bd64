import type { Request, Response } from 'express';
import type { ModelRegistry } from '../../images/ports.js';
import { normalizeRequest, type CanonicalRequest } from '../../images/normalize.js';
import type { GenerateContext, GenerateOutcome, ImageService } from '../../images/generate.js';
import { invalidRequest } from '../../errors.js';
import type { Principal } from '../auth.js';
import type { IdempotentRun, Reply, ReplayScope } from '../idempotency.js';
import type { RequestLocals } from '../waiting-requests.js';

/**
 * The handler's collaborators besides the use case, each wired by app.ts:
 * an answer under an Idempotency-Key (src/http/idempotency.ts) and a
 * streamed answer (src/http/image-stream.ts). What app.ts mounts around the
 * route before it: the Idempotency-Key header's check, the request's one
 * AbortController (src/http/waiting-requests.ts), JSON answers whose b64
 * images go to the socket as Buffers (src/http/images-json.ts).
 */
export interface Replays {
  /** The answer under the caller's Idempotency-Key: the first request's for a repeat, else `work`'s, kept for repeats. */
  answer(scope: ReplayScope, work: (run: IdempotentRun) => Promise<Reply>): Promise<Reply>;
}

export interface ImageStreams {
  /** `stream: true`: progress while fal works, then the images, as Server-Sent Events. */
  answer(res: Response, canonical: CanonicalRequest, ctx: GenerateContext): Promise<void>;
}

export interface ImagesRouteDeps {
  registry: ModelRegistry;
  images: ImageService;
  publicBaseUrl: string | undefined;
  replays: Replays;
  streams: ImageStreams;
  /** STRICT_PARAMS: refuse the hints a model does not act on. */
  strictParams: boolean;
}

/** The origin the caller reached us on, unless PUBLIC_BASE_URL says otherwise. */
export function publicBase(req: Request, configured: string | undefined): string {
  return configured ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}

/** What the answer says about its cost and its fal jobs, beside the body. */
export function usageHeaders(outcome: GenerateOutcome): Record<string, string> {
  return { 'x-usage-cost-usd': outcome.charge.usd, 'x-usage-credits': String(outcome.charge.credits), 'x-fal-request-id': outcome.falRequestIds.join(', ') };
}

/**
 * Parse → the use case → the answer. Failures are thrown to the app's one
 * error handler, which answers in JSON or, once a stream started, as an
 * `error` event. A generation that names an input image is an edit, which
 * app.ts hands to the edits route instead.
 */
export function imagesHandler(deps: ImagesRouteDeps): (req: Request, res: Response) => Promise<void> {
  return async (req, res) => {
    const body = req.body as unknown;
    // Returned, not awaited: this frame ends here, and only the answer's waits on fal (src/http/waiting-requests.ts).
    return answerRequest(deps, req, res, normalizeRequest(deps.registry, body, { strictParams: deps.strictParams }), body);
  };
}

/** The answer to a canonical request, generation or edit: JSON (replayed under an Idempotency-Key) or a stream. `idemBody`: what a replay must match. */
export async function answerRequest(deps: ImagesRouteDeps, req: Request, res: Response, canonical: CanonicalRequest, idemBody: unknown): Promise<void> {
  const locals = res.locals as RequestLocals;
  // Set before anything is written, so a JSON answer, a stream and an error all declare the ignored hints.
  if (canonical.ignoredParams.length > 0) res.set('x-ignored-params', canonical.ignoredParams.join(', '));
  locals.model = canonical.model.id;
  locals.prompt = canonical.falInput['prompt'];
  const idemKey = locals.idempotencyKey;
  const ctx: GenerateContext = {
    requestId: locals.requestId,
    clientRequestId: locals.clientRequestId,
    keyId: (locals.principal as Principal).keyId,
    controller: locals.caller,
    publicBaseUrl: publicBase(req, deps.publicBaseUrl),
    idempotencyKey: idemKey,
  };
  if (canonical.stream) {
    // A replay would have to re-send a stream whose progress is gone; a caller who needs idempotency gets it without streaming.
    if (idemKey !== undefined) throw invalidRequest('Idempotency-Key cannot be combined with stream: true (a stream cannot be replayed); send one or the other.', 'Idempotency-Key', 'idempotency_not_streamable');
    return deps.streams.answer(res, canonical, ctx);
  }
  if (idemKey === undefined) {
    const outcome = await deps.images.generate(canonical, ctx);
    locals.falRequestId = outcome.falRequestIds[0];
    res.status(200).set(usageHeaders(outcome)).json(outcome.body);
    return;
  }
  const scope: ReplayScope = { keyId: ctx.keyId, idemKey, requestId: ctx.requestId, body: idemBody, caller: res, request: canonical, publicBaseUrl: ctx.publicBaseUrl, signal: ctx.controller?.signal };
  const reply = await deps.replays.answer(scope, async (run) => {
    const outcome = await deps.images.generate(canonical, { ...ctx, onSubmitted: () => (run.submitted = true) });
    locals.falRequestId = outcome.falRequestIds[0];
    return { status: 200, headers: usageHeaders(outcome), body: outcome.body };
  });
  res.status(reply.status).set(reply.headers).json(reply.body);
}
