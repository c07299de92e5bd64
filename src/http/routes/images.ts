import { Router, type Request, type Response } from 'express';
import type { ModelRegistry } from '../../models/registry.js';
import { normalizeRequest } from '../../images/normalize.js';
import type { ImageService } from '../../images/generate.js';
import type { Principal } from '../auth.js';

export interface ImagesRouteDeps {
  registry: ModelRegistry;
  images: ImageService;
  publicBaseUrl: string | undefined;
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
    const canonical = normalizeRequest(deps.registry, req.body);
    res.locals.model = canonical.model.id;
    const principal = res.locals.principal as Principal;
    const outcome = await deps.images.generate(canonical, {
      requestId: res.locals.requestId as string,
      keyId: principal.keyId,
      callerSignal: callerGoneSignal(res),
      publicBaseUrl: publicBase(req, deps.publicBaseUrl),
    });
    res.locals.falRequestId = outcome.falRequestId;
    res.set(outcome.headers).json(outcome.body);
  });
  return router;
}
