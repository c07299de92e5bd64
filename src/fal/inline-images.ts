import { randomUUID } from 'node:crypto';

/**
 * With `sync_mode`, fal answers a result with each image inline, as a data
 * URI inside the JSON (`"url":"data:image/png;base64,iVBOR…"`). For a
 * 4-megapixel PNG that string is ~10 MB, and the base64 a `b64_json` caller
 * wants is exactly its payload. Parsing the body the ordinary way copies it
 * three times before we even have the string (chunks → one buffer → one
 * UTF-8 string → the parsed value), and answering copies it twice more.
 *
 * Instead the result body is kept as the chunks it arrived in, each data URI
 * payload is cut out as slices of those chunks (no copy), and the JSON
 * client gets a small body where each payload is replaced by a placeholder
 * URL. The bytes we cut out are, by construction, what JSON.parse would have
 * produced for them: we only cut a string that has no escape in it and
 * consists of base64 characters only, so its bytes and its value coincide.
 * Anything else stays in the JSON and takes the ordinary path.
 */

/** One image's base64 text, as pieces that share the response body's memory. */
export interface InlineImage {
  /** The data URI's media type, e.g. `image/png` (what preceded `;base64,`). */
  mediaType: string;
  /** The data URI up to its payload, as fal sent it (`data:image/png;base64,`). */
  prefix: string;
  /** In order; concatenated they are the base64 text, with no padding or prefix added. */
  parts: Buffer[];
  /** Total bytes of `parts`. */
  length: number;
}

export interface InlineExtraction {
  /** The body with every extracted payload's string replaced by its placeholder. */
  json: Buffer;
  /** Placeholder URL → the image it stands for. */
  images: Map<string, InlineImage>;
  /**
   * The body as received, for falling back to the ordinary parse when the
   * placeholders did not land where we expected them (see FalGateway.result).
   */
  original: Buffer[];
}

/** Placeholders start with this; they are not URLs anything could fetch. */
export const PLACEHOLDER_SCHEME = 'gateway-inline-image:';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
/** A data URI's header (`data:` up to the comma) longer than this is not one of fal's. */
const MAX_HEADER = 256;
const DATA_PREFIX = Buffer.from('data:');
const HEADER_SHAPE = /^data:([a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+)((?:;[a-z0-9!#$&^_.+=-]+)*);base64$/i;

const BASE64 = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=') BASE64[c.charCodeAt(0)] = 1;

/** Positions are offsets into the concatenation of `chunks`, which is never built. */
class ChunkedBytes {
  readonly length: number;
  private readonly starts: number[] = [];

  constructor(readonly chunks: Buffer[]) {
    let at = 0;
    for (const c of chunks) {
      this.starts.push(at);
      at += c.length;
    }
    this.length = at;
  }

  /** Index of the chunk holding `pos` (pos < length). */
  private chunkAt(pos: number): number {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  at(pos: number): number {
    const i = this.chunkAt(pos);
    return this.chunks[i]![pos - this.starts[i]!]!;
  }

  /** First position ≥ from and < to holding `byte`, or -1. */
  indexOf(byte: number, from: number, to = this.length): number {
    if (from >= to) return -1;
    for (let i = this.chunkAt(from); i < this.chunks.length && this.starts[i]! < to; i++) {
      const start = this.starts[i]!;
      const hit = this.chunks[i]!.indexOf(byte, Math.max(0, from - start));
      if (hit >= 0) return start + hit < to ? start + hit : -1;
    }
    return -1;
  }

  /** The bytes [from, to) as views of the chunks (no copy). */
  pieces(from: number, to: number): Buffer[] {
    const out: Buffer[] = [];
    if (from >= to) return out;
    for (let i = this.chunkAt(from); i < this.chunks.length && this.starts[i]! < to; i++) {
      const start = this.starts[i]!;
      const c = this.chunks[i]!;
      out.push(c.subarray(Math.max(0, from - start), Math.min(c.length, to - start)));
    }
    return out;
  }

  startsWith(pos: number, prefix: Buffer): boolean {
    if (pos + prefix.length > this.length) return false;
    for (let k = 0; k < prefix.length; k++) if (this.at(pos + k) !== prefix[k]) return false;
    return true;
  }

  /** Whether [from, to) holds only base64 characters. */
  allBase64(from: number, to: number): boolean {
    // A byte loop, not a regular expression over latin1 strings: those would
    // be a body's worth of garbage on the JS heap, and grow it, for each image.
    for (const p of this.pieces(from, to)) {
      for (let k = 0; k < p.length; k++) if (BASE64[p[k]!] === 0) return false;
    }
    return true;
  }
}

/**
 * Cuts the base64 payload of every data URI string out of a JSON body.
 * Returns null when there is none to cut (the caller then uses the body as
 * it is) or when the body is not shaped like JSON strings we can follow
 * (an unterminated string): the ordinary parser will then say what is wrong.
 * Scanning follows JSON's string syntax only (a `"` outside a string opens
 * one, a `"` after an even run of backslashes closes it), which is enough
 * to never mistake bytes inside a string for the start of another.
 */
export function extractInlineImages(chunks: Buffer[]): InlineExtraction | null {
  const body = new ChunkedBytes(chunks);
  const cuts: Array<{ from: number; to: number; mediaType: string; prefix: string }> = [];
  let pos = 0;
  for (;;) {
    const open = body.indexOf(QUOTE, pos);
    if (open < 0) break;
    const s = open + 1;
    if (body.startsWith(s, DATA_PREFIX)) {
      const comma = body.indexOf(COMMA, s, Math.min(body.length, s + MAX_HEADER));
      const header = comma < 0 ? null : Buffer.concat(body.pieces(s, comma)).toString('latin1');
      const shape = header === null ? null : HEADER_SHAPE.exec(header);
      if (shape && header) {
        const close = body.indexOf(QUOTE, comma + 1);
        if (close < 0) return null;
        // An escape inside means the string's value differs from its bytes:
        // it stays in the JSON for the parser to decode.
        const escape = body.indexOf(BACKSLASH, comma + 1, close);
        if (escape < 0 && close > comma + 1 && body.allBase64(comma + 1, close)) {
          cuts.push({ from: s, to: close, mediaType: shape[1]!.toLowerCase(), prefix: `${header},` });
          pos = close + 1;
          continue;
        }
      }
    }
    const close = endOfString(body, s);
    if (close < 0) return null;
    pos = close + 1;
  }
  if (cuts.length === 0) return null;

  // A fresh nonce per body: a placeholder can never collide with text fal sent.
  const nonce = randomUUID();
  const images = new Map<string, InlineImage>();
  const json: Buffer[] = [];
  let at = 0;
  cuts.forEach((cut, k) => {
    const placeholder = `${PLACEHOLDER_SCHEME}${nonce}/${k}`;
    const payload = cut.from + cut.prefix.length;
    json.push(...body.pieces(at, cut.from), Buffer.from(placeholder, 'latin1'));
    images.set(placeholder, { mediaType: cut.mediaType, prefix: cut.prefix, parts: body.pieces(payload, cut.to), length: cut.to - payload });
    at = cut.to;
  });
  json.push(...body.pieces(at, body.length));
  return { json: Buffer.concat(json), images, original: chunks };
}

/** The data URI an inline image was cut from, as a string (a full copy: only for the rare caller who needs it). */
export function inlineDataUri(image: InlineImage): string {
  return Buffer.concat([Buffer.from(image.prefix, 'latin1'), ...image.parts]).toString('latin1');
}

/** Position of the quote closing the string whose first byte is at `s`, or -1. */
function endOfString(body: ChunkedBytes, s: number): number {
  let from = s;
  for (;;) {
    const q = body.indexOf(QUOTE, from);
    if (q < 0) return -1;
    let slashes = 0;
    while (q - 1 - slashes >= s && body.at(q - 1 - slashes) === BACKSLASH) slashes++;
    if (slashes % 2 === 0) return q;
    from = q + 1;
  }
}
