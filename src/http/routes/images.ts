import { Router, type Request, type Response } from 'express';
import type { ModelRegistry } from '../../models/registry.js';
import { normalizeRequest } from '../../images/normalize.js';
import type { ImageService } from '../../images/generate.js';
import type { Principal } from '../auth.js';
import { parseIdempotencyKey, withIdempotency, type IdempotencyOptions, type Reply } from '../idempotency.js';

export interface ImagesRouteDeps {
  registry: ModelRegistry;
  images: ImageService;
  publicBaseUrl: string | undefined;
  idempotency: IdempotencyOptions;
}

/** The origin the caller reached us on, unless PUBLIC_BASE_URL says otherwise. */
export function publicBase(req: Request, configured: string | undefined): string {
  return configured ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}

/** Aborts when the caller disconnects before we answered. */
export function callerGoneSignal(res: Response): AbortSignal {
  const ac = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) ac.abort(new Error('caller went away'));
  });
  return ac.signal;
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
    const generate = async (run: { submitted: boolean }): Promise<Reply> => {
      const outcome = await deps.images.generate(canonical, {
        requestId,
        keyId: principal.keyId,
        callerSignal: callerGoneSignal(res),
        publicBaseUrl: publicBase(req, deps.publicBaseUrl),
        idempotencyKey: idemKey,
        onSubmitted: () => {
          run.submitted = true;
        },
      });
      res.locals.falRequestId = outcome.falRequestId;
      return { status: 200, headers: outcome.headers, body: outcome.body };
    };
    const reply = idemKey
      ? await withIdempotency(deps.idempotency, { keyId: principal.keyId, idemKey, requestId, body: req.body }, generate)
      : await generate({ submitted: false });
    res.status(reply.status).set(reply.headers).json(reply.body);
  });
  return router;
}
