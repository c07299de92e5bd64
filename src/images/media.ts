/**
 * Where image bytes come from and how callers reach them.
 *
 * fal's public media URLs pass through untouched. Images hosted by a
 * fal-protocol server on a private address (the bundled emulator) are
 * re-addressed to this service's own origin (`/v1/files/...`) and proxied,
 * because OpenAI-compatible clients may refuse loopback/private URLs that do
 * not share the API's origin.
 */
import { inlineDataUri } from '../fal/inline-images.js';
import { createImageHostPolicy, RefusedUrlError, type Resolve } from './outbound.js';
import { b64Item, type Base64Parts } from './b64-item.js';
import type { FileUrls } from './file-urls.js';
import { MediaError } from '../errors.js';
import type { Media } from './ports.js';

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
  /** Signs and verifies the `/v1/files/...` URLs handed to callers (file-urls.ts). */
  fileUrls: FileUrls;
}

/** fal's media hosts, as the first path segment under the emulator's addressing. */
const MEDIA_HOST = /^(?:[a-z0-9-]+\.)*fal\.media$/;

export { MediaError } from '../errors.js';
export type { Media } from '../images/ports.js';

/** The `Media` port, and the bare base64 of an image fal returned as a URL or a data URI. */
export interface ImageMedia extends Media {
  /**
   * Bare base64 (no `data:` prefix): a string when fal sent a data URI (a
   * slice of it, no copy) and Buffers when it had to be downloaded.
   */
  base64(falUrl: string, signal?: AbortSignal): Promise<string | Base64Parts>;
}

export function createMedia(opts: MediaOptions): ImageMedia {
  const base = opts.falBaseUrl?.replace(/\/+$/, '');
  const fetchImpl = opts.fetchImpl ?? fetch;
  const maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const hosts = createImageHostPolicy({ allowed: opts.allowedHosts, falBaseUrl: base, resolve: opts.resolve });

  function mediaPath(rest: string): boolean {
    const host = rest.split('/', 1)[0] ?? '';
    return base !== undefined && MEDIA_HOST.test(host) && !rest.includes('..') && !rest.includes('\\');
  }

  return {
    proxyTarget(rest, query) {
      if (!mediaPath(rest)) return null;
      const signed = opts.fileUrls.verify(rest, query);
      return signed ? { url: `${base}/${rest}`, signed } : null;
    },

    clientUrl(result, falUrl, publicBaseUrl, tenant) {
      // fal sent the image inline although we asked for a URL (no sync_mode): the caller gets the data URI fal sent.
      const inline = result.inlineImages?.get(falUrl);
      if (inline) return inlineDataUri(inline);
      if (base && falUrl.startsWith(`${base}/`)) {
        const rest = falUrl.slice(base.length + 1);
        if (mediaPath(rest)) return `${publicBaseUrl.replace(/\/+$/, '')}/v1/files/${rest}?${opts.fileUrls.sign(rest, tenant)}`;
      }
      return falUrl;
    },

    // Buffers until the answer is written (src/http/images-json.ts).
    b64Item: async (result, falUrl, signal) => b64Item(result.inlineImages?.get(falUrl) ?? (await base64(falUrl, signal))),
    base64,
  };

  async function base64(falUrl: string, signal?: AbortSignal): Promise<string | Base64Parts> {
    if (falUrl.startsWith('data:')) {
      const comma = falUrl.indexOf(',');
      if (comma < 0 || !falUrl.slice(0, comma).endsWith(';base64')) throw new MediaError('fal returned a data URI that is not base64');
      return falUrl.slice(comma + 1);
    }
    // fal ignored sync_mode and sent a URL. It is upstream data, so it is
    // fetched only under the outbound policy (see outbound.ts).
    const timeout = AbortSignal.timeout(timeoutMs);
    const abort = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const encoder = base64Encoder();
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
        encoder.push(chunk);
      }
    } catch (err) {
      if (err instanceof MediaError) throw err;
      if (err instanceof RefusedUrlError) throw new MediaError(`refusing to fetch an image: ${err.message}`);
      if (timeout.aborted) throw new MediaError(`image download did not finish within ${timeoutMs} ms`);
      throw new MediaError(`image download failed: ${(err as Error)?.message ?? String(err)}`);
    }
    return encoder.end();
  }
}

/** Bytes in, base64 out as Buffers: 3 bytes make 4 characters, so whole triples are encoded as they come. */
function base64Encoder(): { push(chunk: Uint8Array): void; end(): Base64Parts } {
  const parts: Buffer[] = [];
  let length = 0;
  let carry = Buffer.alloc(0);
  const emit = (bytes: Buffer) => {
    if (bytes.length === 0) return;
    // Each string is one chunk's worth (garbage at once); only the Buffers stay.
    const part = Buffer.from(bytes.toString('base64'), 'latin1');
    parts.push(part);
    length += part.length;
  };
  return {
    push(chunk) {
      const bytes = carry.length ? Buffer.concat([carry, chunk]) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      const whole = bytes.length - (bytes.length % 3);
      emit(bytes.subarray(0, whole));
      // Copied so the rest of the chunk is not kept alive by two bytes.
      carry = Buffer.from(bytes.subarray(whole));
    },
    end() {
      emit(carry);
      return { parts, length };
    },
  };
}
