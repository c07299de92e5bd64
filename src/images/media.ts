/**
 * Where image bytes come from and how callers reach them.
 *
 * fal's public media URLs pass through untouched. Images hosted by a
 * fal-protocol server on a private address (the bundled emulator) are
 * re-addressed to this service's own origin (`/v1/files/...`) and proxied,
 * because OpenAI-compatible clients may refuse loopback/private URLs that do
 * not share the API's origin.
 */
import { createImageHostPolicy, RefusedUrlError, type Resolve } from './outbound.js';

export interface MediaOptions {
  /** The fal-protocol server whose media we proxy (FAL_BASE_URL / the emulator). */
  falBaseUrl: string | undefined;
  fetchImpl?: typeof fetch;
  /** Largest image we will download to base64-encode it (IMAGE_MAX_BYTES). */
  maxBytes?: number;
  /** The whole download, DNS to last byte (IMAGE_FETCH_TIMEOUT_MS). */
  timeoutMs?: number;
  /** IMAGE_HOSTS_ALLOWED, normalized; undefined = fal's media hosts and the fal base origin. */
  allowedHosts?: readonly string[] | undefined;
  /** Host resolution for the private-address check; tests inject one. */
  resolve?: Resolve;
}

/** fal's media hosts, as the first path segment under the emulator's addressing. */
const MEDIA_HOST = /^(?:[a-z0-9-]+\.)*fal\.media$/;

export class MediaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MediaError';
  }
}

export interface Media {
  /** The URL we hand the caller for an image fal returned. */
  toClientUrl(falUrl: string, publicBaseUrl: string): string;
  /** Bare base64 (no `data:` prefix) for an image fal returned. */
  toBase64(falUrl: string, signal?: AbortSignal): Promise<string>;
  /** For GET /v1/files/<rest>: the upstream URL to proxy, or null if not ours to serve. */
  proxyTarget(rest: string): string | null;
}

export function createMedia(opts: MediaOptions): Media {
  const base = opts.falBaseUrl?.replace(/\/+$/, '');
  const fetchImpl = opts.fetchImpl ?? fetch;
  const maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const hosts = createImageHostPolicy({ allowed: opts.allowedHosts, falBaseUrl: base, resolve: opts.resolve });

  function proxyTarget(rest: string): string | null {
    if (!base) return null;
    const host = rest.split('/', 1)[0] ?? '';
    if (!MEDIA_HOST.test(host) || rest.includes('..') || rest.includes('\\')) return null;
    return `${base}/${rest}`;
  }

  return {
    proxyTarget,

    toClientUrl(falUrl, publicBaseUrl) {
      if (base && falUrl.startsWith(`${base}/`)) {
        const rest = falUrl.slice(base.length + 1);
        if (proxyTarget(rest)) return `${publicBaseUrl.replace(/\/+$/, '')}/v1/files/${rest}`;
      }
      return falUrl;
    },

    async toBase64(falUrl, signal) {
      if (falUrl.startsWith('data:')) {
        const comma = falUrl.indexOf(',');
        if (comma < 0 || !falUrl.slice(0, comma).endsWith(';base64')) throw new MediaError('fal returned a data URI that is not base64');
        return falUrl.slice(comma + 1);
      }
      // fal ignored sync_mode and sent a URL. It is upstream data, so it is
      // fetched only under the outbound policy (see outbound.ts).
      const timeout = AbortSignal.timeout(timeoutMs);
      const abort = signal ? AbortSignal.any([signal, timeout]) : timeout;
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        await hosts.check(falUrl, abort);
        // A redirect's target would escape the host check: none is followed.
        const res = await fetchImpl(falUrl, { redirect: 'manual', signal: abort });
        if (res.status >= 300 && res.status < 400) {
          await res.body?.cancel().catch(() => {});
          throw new MediaError(`image download answered a redirect (HTTP ${res.status}); redirects are not followed`);
        }
        if (!res.ok || !res.body) {
          await res.body?.cancel().catch(() => {});
          throw new MediaError(`image download failed with HTTP ${res.status}`);
        }
        const declared = Number(res.headers.get('content-length') ?? '0');
        if (declared > maxBytes) {
          await res.body.cancel().catch(() => {});
          throw new MediaError(`image larger than ${maxBytes} bytes`);
        }
        for await (const chunk of res.body) {
          size += chunk.byteLength;
          // Leaving the loop cancels the stream, so the rest is never read.
          if (size > maxBytes) throw new MediaError(`image larger than ${maxBytes} bytes`);
          chunks.push(Buffer.from(chunk));
        }
      } catch (err) {
        if (err instanceof MediaError) throw err;
        if (err instanceof RefusedUrlError) throw new MediaError(`refusing to fetch an image: ${err.message}`);
        if (timeout.aborted) throw new MediaError(`image download did not finish within ${timeoutMs} ms`);
        throw new MediaError(`image download failed: ${(err as Error)?.message ?? String(err)}`);
      }
      return Buffer.concat(chunks, size).toString('base64');
    },
  };
}
