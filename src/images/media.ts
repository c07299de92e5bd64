/**
 * Where image bytes come from and how callers reach them.
 *
 * fal's public media URLs pass through untouched. Images hosted by a
 * fal-protocol server on a private address (the bundled emulator) are
 * re-addressed to this service's own origin (`/v1/files/...`) and proxied,
 * because OpenAI-compatible clients may refuse loopback/private URLs that do
 * not share the API's origin.
 */

export interface MediaOptions {
  /** The fal-protocol server whose media we proxy (FAL_BASE_URL / the emulator). */
  falBaseUrl: string | undefined;
  fetchImpl?: typeof fetch;
  /** Largest image we will download to base64-encode it. */
  maxBytes?: number;
  timeoutMs?: number;
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
      // fal ignored sync_mode and sent a URL: fetch it, but only from hosts
      // that are fal's own (or the configured fal-protocol server).
      const u = new URL(falUrl);
      const ours = base !== undefined && falUrl.startsWith(`${base}/`);
      if (!ours && !(u.protocol === 'https:' && MEDIA_HOST.test(u.hostname))) {
        throw new MediaError(`refusing to fetch an image from ${u.hostname}`);
      }
      const timeout = AbortSignal.timeout(timeoutMs);
      const res = await fetchImpl(falUrl, { redirect: 'error', signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
      if (!res.ok || !res.body) throw new MediaError(`image download failed with HTTP ${res.status}`);
      const declared = Number(res.headers.get('content-length') ?? '0');
      if (declared > maxBytes) {
        await res.body.cancel();
        throw new MediaError(`image larger than ${maxBytes} bytes`);
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body) {
        size += chunk.byteLength;
        if (size > maxBytes) throw new MediaError(`image larger than ${maxBytes} bytes`);
        chunks.push(Buffer.from(chunk));
      }
      return Buffer.concat(chunks, size).toString('base64');
    },
  };
}
