import { Router } from 'express';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { notFound } from '../../errors.js';
import type { Media } from '../../images/media.js';

/**
 * Serves images held by a fal-protocol server on a private address (the
 * emulator) from this service's own origin. Only media paths are proxied,
 * never the upstream's other routes, and only under a valid signature
 * (src/images/file-urls.ts): an altered or expired URL is a 404 before
 * anything is fetched. No API key is needed: the URL is the permission.
 */
export function filesRouter(media: Media, fetchImpl: typeof fetch = fetch): Router {
  const router = Router();
  router.get('/v1/files/*path', async (req, res) => {
    const segments = (req.params as { path?: string[] }).path ?? [];
    const target = media.proxyTarget(segments.join('/'), req.query as Record<string, unknown>);
    if (!target) throw notFound('No such file.');
    const upstream = await fetchImpl(target.url, { redirect: 'error', signal: AbortSignal.timeout(30_000) });
    if (!upstream.ok || !upstream.body) {
      await upstream.body?.cancel();
      throw notFound('No such file.');
    }
    res.status(200);
    res.setHeader('content-type', upstream.headers.get('content-type') ?? 'application/octet-stream');
    const len = upstream.headers.get('content-length');
    if (len) res.setHeader('content-length', len);
    // The bytes behind a URL never change; a cache may keep them until the URL expires.
    const maxAge = Math.max(0, target.signed.expiresAt - Math.floor(Date.now() / 1000));
    res.setHeader('cache-control', `public, max-age=${maxAge}, immutable`);
    // A body cut short upstream must cut ours short too, not hang the caller.
    await pipeline(Readable.fromWeb(upstream.body as import('node:stream/web').ReadableStream), res).catch(() => res.destroy());
  });
  return router;
}
