import { Router } from 'express';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { notFound } from '../../errors.js';
import type { Media } from '../../images/media.js';

/**
 * Serves images held by a fal-protocol server on a private address (the
 * emulator) from this service's own origin. Only media paths are proxied,
 * never the upstream's other routes.
 */
export function filesRouter(media: Media, fetchImpl: typeof fetch = fetch): Router {
  const router = Router();
  router.get('/v1/files/*path', async (req, res) => {
    const segments = (req.params as { path?: string[] }).path ?? [];
    const target = media.proxyTarget(segments.join('/'));
    if (!target) throw notFound('No such file.');
    const upstream = await fetchImpl(target, { redirect: 'error', signal: AbortSignal.timeout(30_000) });
    if (!upstream.ok || !upstream.body) {
      await upstream.body?.cancel();
      throw notFound('No such file.');
    }
    res.status(200);
    res.setHeader('content-type', upstream.headers.get('content-type') ?? 'application/octet-stream');
    const len = upstream.headers.get('content-length');
    if (len) res.setHeader('content-length', len);
    // Emulated images are a pure function of their URL.
    res.setHeader('cache-control', 'public, max-age=86400, immutable');
    // A body cut short upstream must cut ours short too, not hang the caller.
    await pipeline(Readable.fromWeb(upstream.body as import('node:stream/web').ReadableStream), res).catch(() => res.destroy());
  });
  return router;
}
