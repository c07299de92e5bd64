import { imageSize } from 'image-size';
import type { FetchLike } from './redirect-fetch.js';

/**
 * An output image's width and height read from the image itself, for when
 * fal's output leaves them out: they are optional in fal's own types
 * (`Image` in `@fal-ai/client/endpoints`), and the price depends on them.
 *
 * Only the header is read. `image-size` parses the header of png, jpeg, webp
 * (and gif, avif, tiff…) from whatever prefix of the file it is given, in
 * plain JavaScript: a URL is streamed and the download stopped as soon as the
 * prefix parses, and a data URI has only its first bytes decoded. sharp
 * (already a dependency) reads metadata too, but through libvips on a whole
 * buffer, and does not promise anything for a truncated one.
 */

export interface Dimensions {
  width: number;
  height: number;
}

/** A JPEG's size marker can follow large EXIF/ICC blocks; past this many bytes we give up. */
export const HEADER_MAX_BYTES = 1024 * 1024;
/** Base64 characters decoded first from a data URI (48 KiB of image): enough for every header but the rare large EXIF. */
const BASE64_FIRST_CHARS = 64 * 1024;

export class DimensionsError extends Error {
  override name = 'DimensionsError';
}

/** Bytes appended after a prefix to see whether its parse looked past the end (see dimensionsOf). */
const PROBE_PAD = 1024;

/**
 * The size in a header at the start of `bytes`, or undefined when these
 * bytes do not hold one (yet). `image-size` reads through DataViews over the
 * whole underlying buffer and does not stop at the end of a truncated input:
 * on the first 16 bytes of a webp it answers 7424×10753. So the prefix is
 * parsed twice, followed once by zeros and once by 0xff bytes, each in a
 * buffer of its own: a size that depends on bytes we do not have differs
 * between the two (or fails), and only a size both agree on is taken.
 */
export function dimensionsOf(bytes: Uint8Array): Dimensions | undefined {
  const a = parsePadded(bytes, 0x00);
  const b = a && parsePadded(bytes, 0xff);
  return a && b && a.width === b.width && a.height === b.height ? a : undefined;
}

function parsePadded(bytes: Uint8Array, fill: number): Dimensions | undefined {
  const padded = new Uint8Array(bytes.length + PROBE_PAD);
  padded.set(bytes);
  padded.fill(fill, bytes.length);
  try {
    const { width, height } = imageSize(padded);
    return isSide(width) && isSide(height) ? { width, height } : undefined;
  } catch {
    return undefined;
  }
}

export function isSide(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n > 0;
}

/**
 * The size of an image given as base64 text (a data URI's payload, as one
 * string or as pieces): its first characters are decoded, then, only if the
 * header lies further in, all of it.
 */
export function dimensionsOfBase64(text: string | readonly Buffer[]): Dimensions {
  const pieces = typeof text === 'string' ? [Buffer.from(text, 'latin1')] : text;
  const first = dimensionsOf(decodeBase64Prefix(pieces, BASE64_FIRST_CHARS));
  const found = first ?? dimensionsOf(decodeBase64Prefix(pieces, Infinity));
  if (!found) throw new DimensionsError('the inline image has no readable png, jpeg or webp header');
  return found;
}

function decodeBase64Prefix(pieces: readonly Buffer[], chars: number): Buffer {
  const taken: Buffer[] = [];
  let length = 0;
  for (const p of pieces) {
    if (length >= chars) break;
    const part = p.subarray(0, Math.min(p.length, chars - length));
    taken.push(part);
    length += part.length;
  }
  const text = taken.length === 1 ? taken[0]! : Buffer.concat(taken);
  // Whole quadruples only: a cut one would decode to a wrong last byte.
  return Buffer.from(text.subarray(0, text.length - (text.length % 4)).toString('latin1'), 'base64');
}

export interface UrlDimensionsOptions {
  fetch: FetchLike;
  signal?: AbortSignal | undefined;
  maxBytes?: number;
}

/**
 * The size of the image at `url`, from as few of its first bytes as its
 * header needs. The GET asks for a range (at most `maxBytes`); a server that
 * ignores it answers 200 and the rest of the body is never read.
 */
export async function dimensionsFromUrl(url: string, opts: UrlDimensionsOptions): Promise<Dimensions> {
  const maxBytes = opts.maxBytes ?? HEADER_MAX_BYTES;
  let res: Response;
  try {
    res = await opts.fetch(url, { headers: { range: `bytes=0-${maxBytes - 1}` }, redirect: 'manual', ...(opts.signal ? { signal: opts.signal } : {}) });
  } catch (err) {
    throw new DimensionsError(`the image could not be fetched: ${(err as Error)?.message ?? String(err)}`);
  }
  if ((res.status !== 200 && res.status !== 206) || !res.body) {
    await res.body?.cancel().catch(() => {});
    throw new DimensionsError(`the image could not be fetched: HTTP ${res.status}`);
  }
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    // Leaving the loop cancels the body: the rest of the image is never downloaded.
    for await (const chunk of res.body) {
      chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      length += chunk.byteLength;
      const found = dimensionsOf(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length));
      if (found) return found;
      if (length >= maxBytes) break;
    }
  } catch (err) {
    throw new DimensionsError(`the image download failed: ${(err as Error)?.message ?? String(err)}`);
  }
  throw new DimensionsError(`no readable png, jpeg or webp header in the first ${Math.min(length, maxBytes)} bytes of the image`);
}

/** An output image as fal sent it: `width`/`height` may be missing. */
export interface OutputImage {
  url: string;
  width?: unknown;
  height?: unknown;
}

/**
 * Gives every image of `images` without a usable width and height the size
 * its own header says, in place: an inline image (`inline`, keyed by its
 * placeholder url) or a data URI from its bytes, any other url through
 * `fromUrl`. Images fal sized are left as fal sent them.
 */
export async function fillDimensions(
  images: OutputImage[],
  inline: ReadonlyMap<string, { parts: Buffer[] }> | undefined,
  fromUrl: (url: string) => Promise<Dimensions>,
): Promise<void> {
  await Promise.all(
    images.map(async (img, i) => {
      if (isSide(img.width) && isSide(img.height)) return;
      try {
        const held = inline?.get(img.url);
        const comma = img.url.indexOf(',');
        const size = held
          ? dimensionsOfBase64(held.parts)
          : img.url.startsWith('data:')
            ? dimensionsOfBase64(img.url.slice(comma + 1))
            : await fromUrl(img.url);
        img.width = size.width;
        img.height = size.height;
      } catch (err) {
        throw new DimensionsError(`image ${i} has no width/height and ${(err as Error).message}`);
      }
    }),
  );
}
