/**
 * Emulated images: real PNG/JPEG/WEBP files of exactly the requested size,
 * deterministic for (prompt, seed, index, size, format) and visibly stamped
 * EMULATED.
 *
 * Image URLs are stateless: the render parameters travel inside the URL
 * (`/v3.fal.media/files/emulated/<token>.<ext>`), so any URL the emulator ever
 * handed out stays valid forever, across restarts and resets, and nothing has
 * to be stored per image. Bytes are rendered on GET and kept in a small LRU.
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { drawText, fillRect, GLYPH_HEIGHT, textCells, type RawImage } from './font.js';
import { MissingSourceError, paintDerived } from './derived.js';

export { MissingSourceError } from './derived.js';

export type ImageFormat = 'png' | 'jpeg' | 'webp';
export type ImageMode = 'entropy' | 'cheap';

export const CONTENT_TYPES: Record<ImageFormat, string> = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
};

const EXTENSIONS: Record<ImageFormat, string> = { png: 'png', jpeg: 'jpg', webp: 'webp' };

export const IMAGE_SIZE_PRESETS: Record<string, { width: number; height: number }> = {
  square_hd: { width: 1024, height: 1024 },
  square: { width: 512, height: 512 },
  portrait_4_3: { width: 768, height: 1024 },
  portrait_16_9: { width: 576, height: 1024 },
  landscape_4_3: { width: 1024, height: 768 },
  landscape_16_9: { width: 1024, height: 576 },
};

/**
 * What a URL token carries. `e` = entropy content, `c` = the cheap shared
 * image of a size/format, `b` = the black frame fal substitutes for an image
 * its safety checker blocked, `d` = an edit: the input image (`src`)
 * recoloured by `strength`, only where the mask (`mask`) is white when there
 * is one (derived.ts).
 */
export interface RenderSpec {
  kind: 'e' | 'c' | 'b' | 'd';
  width: number;
  height: number;
  format: ImageFormat;
  seed?: number;
  index?: number;
  /** First 16 hex chars of sha256(prompt): keeps URLs short for long prompts. */
  promptHash?: string;
  /** Unix seconds after which the URL is no longer served (media expiry); absent = never. */
  expiresAt?: number;
  /** Edits (`d`): the input image's URL, the mask's, and the strength 0-1. */
  src?: string;
  mask?: string;
  strength?: number;
}

export function promptHash(prompt: string): string {
  return createHash('sha256').update(prompt).digest('hex').slice(0, 16);
}

/** URL path (without leading slash, without host) for a render spec, served until `expiresAt` (unix seconds). */
export function imagePath(spec: RenderSpec, expiresAt?: number): string {
  const compact: Record<string, unknown> = { v: 1, k: spec.kind, w: spec.width, h: spec.height, f: spec.format };
  if (spec.kind === 'e' || spec.kind === 'd') {
    compact.s = spec.seed;
    compact.i = spec.index;
    compact.p = spec.promptHash;
  }
  if (spec.kind === 'd') {
    compact.u = spec.src;
    compact.m = spec.mask;
    compact.t = spec.strength;
  }
  if (expiresAt !== undefined) compact.x = expiresAt;
  const token = Buffer.from(JSON.stringify(compact)).toString('base64url');
  return `v3.fal.media/files/emulated/${token}.${EXTENSIONS[spec.format]}`;
}

export function fileName(spec: RenderSpec): string {
  const id = createHash('sha256').update(imagePath(spec)).digest('base64url').slice(0, 21);
  return `${id}.${EXTENSIONS[spec.format]}`;
}

const MAX_DIMENSION = 16384;

/** Parses the `<token>.<ext>` tail of an emulated-image URL; null if it is not one. */
export function parseImageToken(tail: string): RenderSpec | null {
  const m = /^([A-Za-z0-9_-]+)\.(png|jpg|jpeg|webp)$/.exec(tail);
  if (!m) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(m[1]!, 'base64url').toString('utf8'));
  } catch {
    return null;
  }
  if (typeof raw !== 'object' || raw === null) return null;
  const o = raw as Record<string, unknown>;
  const format = o.f;
  if (o.v !== 1 || (format !== 'png' && format !== 'jpeg' && format !== 'webp')) return null;
  if (EXTENSIONS[format] !== m[2] && !(format === 'jpeg' && m[2] === 'jpeg')) return null;
  const kind = o.k;
  if (kind !== 'e' && kind !== 'c' && kind !== 'b' && kind !== 'd') return null;
  const dim = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= MAX_DIMENSION;
  if (!dim(o.w) || !dim(o.h)) return null;
  const spec: RenderSpec = { kind, width: o.w as number, height: o.h as number, format };
  if (kind === 'd') {
    if (typeof o.u !== 'string' || (o.m !== undefined && typeof o.m !== 'string')) return null;
    if (typeof o.t !== 'number' || !(o.t >= 0 && o.t <= 1)) return null;
    spec.src = o.u;
    if (typeof o.m === 'string') spec.mask = o.m;
    spec.strength = o.t;
  }
  if (kind === 'e' || kind === 'd') {
    if (typeof o.s !== 'number' || !Number.isFinite(o.s)) return null;
    if (typeof o.i !== 'number' || !Number.isInteger(o.i) || o.i < 0) return null;
    if (typeof o.p !== 'string' || !/^[0-9a-f]{16}$/.test(o.p)) return null;
    spec.seed = o.s;
    spec.index = o.i;
    spec.promptHash = o.p;
  }
  if (o.x !== undefined) {
    if (typeof o.x !== 'number' || !Number.isInteger(o.x)) return null;
    spec.expiresAt = o.x;
  }
  return spec;
}

/** xorshift128: fast, seedable, and good enough for texture. */
function makeRng(seedBytes: Buffer): () => number {
  let a = seedBytes.readUInt32LE(0) | 1;
  let b = seedBytes.readUInt32LE(4);
  let c = seedBytes.readUInt32LE(8);
  let d = seedBytes.readUInt32LE(12);
  return () => {
    let t = a ^ (a << 11);
    a = b;
    b = c;
    c = d;
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return d;
  };
}

type Rgb = [number, number, number];

function stamp(img: RawImage, lines: string[], band: Rgb, ink: Rgb): void {
  const main = lines[0] ?? 'EMULATED';
  // Fit the width, but never let the stamp take more than ~40% of the height
  // (wide, short sizes such as 2048x64 would otherwise clip the text).
  const rows = GLYPH_HEIGHT * (1 + (lines.length - 1) * 0.6);
  const scale = Math.max(1, Math.floor(Math.min((img.width * 0.7) / textCells(main), (img.height * 0.4) / rows)));
  const small = Math.max(1, Math.floor(scale / 4));
  const lineGap = Math.max(1, Math.floor(scale * 1.5));
  const totalH = GLYPH_HEIGHT * scale + (lines.length - 1) * (GLYPH_HEIGHT * small + lineGap);
  const pad = Math.max(1, Math.floor(scale * 1.5));
  const top = Math.floor((img.height - totalH) / 2);
  fillRect(img, 0, top - pad, img.width, totalH + 2 * pad, band, 0.82);
  drawText(img, main, Math.floor((img.width - textCells(main) * scale) / 2), top, scale, ink);
  let y = top + GLYPH_HEIGHT * scale + lineGap;
  for (const line of lines.slice(1)) {
    drawText(img, line, Math.floor((img.width - textCells(line) * small) / 2), y, small, ink);
    y += GLYPH_HEIGHT * small + lineGap;
  }
}

/**
 * Entropy content: a seeded colour field (gradient + waves), a few shapes and
 * per-pixel noise, so encoders produce file sizes in the range real generated
 * images have (a flat image would compress to a few KB and hide
 * size-dependent bugs such as body limits and slow downloads).
 */
function paintEntropy(spec: RenderSpec): RawImage {
  const { width: w, height: h } = spec;
  const seedBytes = createHash('sha256')
    .update(`${spec.promptHash}|${spec.seed}|${spec.index}|${w}x${h}`)
    .digest();
  const rnd = makeRng(seedBytes);
  const unit = () => rnd() / 0x100000000;
  const data = Buffer.allocUnsafe(w * h * 3);
  const img: RawImage = { data, width: w, height: h, channels: 3 };

  const base: Rgb[] = [0, 1, 2].map(() => [unit() * 255, unit() * 255, unit() * 255] as Rgb);
  const colWave: Float32Array[] = [];
  const rowWave: Float32Array[] = [];
  for (let ch = 0; ch < 3; ch++) {
    const cw = new Float32Array(w);
    const fx = (2 + unit() * 6) * (Math.PI * 2) / w;
    const phx = unit() * Math.PI * 2;
    for (let x = 0; x < w; x++) {
      const t = w > 1 ? x / (w - 1) : 0;
      cw[x] = base[0]![ch]! * (1 - t) + base[1]![ch]! * t + 28 * Math.sin(x * fx + phx);
    }
    const rw = new Float32Array(h);
    const fy = (2 + unit() * 6) * (Math.PI * 2) / h;
    const phy = unit() * Math.PI * 2;
    for (let y = 0; y < h; y++) {
      const t = h > 1 ? y / (h - 1) : 0;
      rw[y] = (base[2]![ch]! - 128) * t + 28 * Math.sin(y * fy + phy);
    }
    colWave.push(cw);
    rowWave.push(rw);
  }
  const [c0, c1, c2] = colWave as [Float32Array, Float32Array, Float32Array];
  const [r0, r1, r2] = rowWave as [Float32Array, Float32Array, Float32Array];
  // A clamped view saturates instead of wrapping, so the hot loop needs no
  // branches; noise comes from an inlined xorshift32 for the same reason.
  const px = new Uint8ClampedArray(data.buffer, data.byteOffset, data.length);
  let state = seedBytes.readUInt32LE(16) | 1;
  let o = 0;
  for (let y = 0; y < h; y++) {
    const a = r0[y]! - 4;
    const b = r1[y]! - 4;
    const c = r2[y]! - 4;
    for (let x = 0; x < w; x++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      // Three bits of noise per channel: close to what fal's PNGs weigh per pixel.
      px[o++] = c0[x]! + a + (state & 7);
      px[o++] = c1[x]! + b + ((state >>> 3) & 7);
      px[o++] = c2[x]! + c + ((state >>> 6) & 7);
    }
  }

  const shapes = 5 + (rnd() % 8);
  for (let s = 0; s < shapes; s++) {
    const color: Rgb = [rnd() & 255, rnd() & 255, rnd() & 255];
    const cx = unit() * w;
    const cy = unit() * h;
    const r = (0.05 + unit() * 0.2) * Math.min(w, h);
    if (rnd() & 1) {
      fillRect(img, cx - r, cy - r * 0.6, 2 * r, 1.2 * r, color, 0.55);
    } else {
      const ys = Math.max(0, Math.floor(cy - r));
      const ye = Math.min(h, Math.ceil(cy + r));
      for (let y = ys; y < ye; y++) {
        const dy = y - cy;
        const half = Math.sqrt(Math.max(0, r * r - dy * dy));
        fillRect(img, cx - half, y, 2 * half, 1, color, 0.55);
      }
    }
  }

  stamp(img, ['EMULATED', `#${spec.index} SEED ${spec.seed}`], [16, 16, 16], [255, 255, 255]);
  return img;
}

function paintFlat(spec: RenderSpec, rgb: Rgb, band: Rgb, lines: string[]): RawImage {
  const data = Buffer.alloc(spec.width * spec.height * 3);
  const img: RawImage = { data, width: spec.width, height: spec.height, channels: 3 };
  fillRect(img, 0, 0, spec.width, spec.height, rgb);
  stamp(img, lines, band, [255, 255, 255]);
  return img;
}

async function encode(img: RawImage, format: ImageFormat): Promise<Buffer> {
  const pipeline = sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });
  switch (format) {
    case 'png':
      return pipeline.png({ compressionLevel: 6 }).toBuffer();
    case 'jpeg':
      return pipeline.jpeg({ quality: 95 }).toBuffer();
    case 'webp':
      return pipeline.webp({ quality: 90, effort: 2 }).toBuffer();
  }
}

/** Reads an edit's input (image or mask) by its URL; undefined when it is gone. */
export type SourceLoader = (url: string) => Promise<Buffer | undefined>;

export async function renderImage(spec: RenderSpec, load?: SourceLoader): Promise<Buffer> {
  let img: RawImage;
  if (spec.kind === 'd') {
    if (!load) throw new MissingSourceError('no source loader for an edit');
    img = await paintDerived(spec, load);
    stamp(img, ['EMULATED', `EDIT #${spec.index} SEED ${spec.seed}`], [16, 16, 16], [255, 255, 255]);
  } else if (spec.kind === 'e') img = paintEntropy(spec);
  else if (spec.kind === 'b') img = paintFlat(spec, [0, 0, 0], [40, 40, 40], ['EMULATED', 'BLOCKED']);
  else img = paintFlat(spec, [96, 104, 120], [24, 24, 32], ['EMULATED']);
  return encode(img, spec.format);
}

export interface ImageCache {
  get(spec: RenderSpec): Promise<Buffer>;
  clear(): void;
  readonly bytes: number;
}

/**
 * LRU over encoded bytes, with concurrent requests for one URL sharing a
 * single render (a client downloading 4 images right after completion would
 * otherwise render each twice when it retries).
 */
export function createImageCache(maxBytes: number, load?: SourceLoader): ImageCache {
  const done = new Map<string, Buffer>();
  const inflight = new Map<string, Promise<Buffer>>();
  let bytes = 0;
  const keyOf = (spec: RenderSpec) => imagePath(spec);
  return {
    get bytes() {
      return bytes;
    },
    async get(spec) {
      const key = keyOf(spec);
      const hit = done.get(key);
      if (hit) {
        done.delete(key);
        done.set(key, hit);
        return hit;
      }
      const pending = inflight.get(key);
      if (pending) return pending;
      const p = renderImage(spec, load).then(
        (buf) => {
          inflight.delete(key);
          if (buf.length <= maxBytes) {
            done.set(key, buf);
            bytes += buf.length;
            for (const [k, v] of done) {
              if (bytes <= maxBytes) break;
              done.delete(k);
              bytes -= v.length;
            }
          }
          return buf;
        },
        (err: unknown) => {
          inflight.delete(key);
          throw err;
        },
      );
      inflight.set(key, p);
      return p;
    },
    clear() {
      done.clear();
      bytes = 0;
    },
  };
}
