/**
 * Emulated edits: the output is the input image, visibly changed where the
 * edit applies, so a test can see the edit happened where it should.
 *
 * - image-to-image (no mask): every pixel moves towards a tint by
 *   `strength`, fal's "strength of the image-to-image conditioning" (0 keeps
 *   the input, 1 departs from it entirely);
 * - inpaint: only where fal's mask is white ("white = repaint", fal's
 *   inpaint input `mask_image_url`), by `strength` (fal's default 1); black
 *   areas keep the input's pixels exactly.
 *
 * The tint is deterministic for (prompt, seed, index). The input is resized
 * to the output size when they differ (fal's `image_size` may ask for
 * another size than the input's).
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { RawImage } from './font.js';
import type { RenderSpec, SourceLoader } from './images.js';

export class MissingSourceError extends Error {
  override name = 'MissingSourceError';
}

async function rgbAt(bytes: Buffer, width: number, height: number, channels: 1 | 3): Promise<Buffer> {
  let p = sharp(bytes).removeAlpha().resize(width, height, { fit: 'fill' });
  if (channels === 1) p = p.greyscale();
  const { data, info } = await p.raw().toBuffer({ resolveWithObject: true });
  if (info.channels === channels) return data;
  // greyscale of a colour input can keep its channels in raw output: take the first.
  const out = Buffer.alloc(width * height * channels);
  for (let i = 0, j = 0; j < out.length; i += info.channels, j += channels) data.copy(out, j, i, i + channels);
  return out;
}

async function load(loader: SourceLoader, url: string): Promise<Buffer> {
  const bytes = await loader(url);
  if (!bytes) throw new MissingSourceError(`edit input ${url} is gone`);
  return bytes;
}

export function tintOf(spec: RenderSpec): [number, number, number] {
  const h = createHash('sha256').update(`${spec.promptHash}|${spec.seed}|${spec.index}|tint`).digest();
  // Saturated, so even a light recolouring shows.
  const c: [number, number, number] = [h[0]!, h[1]!, h[2]!];
  c[h[3]! % 3] = 255;
  c[(h[3]! + 1) % 3] = h[4]! % 64;
  return c;
}

export async function paintDerived(spec: RenderSpec, loader: SourceLoader): Promise<RawImage> {
  const { width: w, height: h } = spec;
  const base = await rgbAt(await load(loader, spec.src!), w, h, 3);
  const mask = spec.mask === undefined ? undefined : await rgbAt(await load(loader, spec.mask), w, h, 1);
  const s = spec.strength ?? 0.6;
  const [tr, tg, tb] = tintOf(spec);
  const data = Buffer.from(base);
  for (let p = 0, o = 0; p < w * h; p++, o += 3) {
    if (mask && mask[p]! < 128) continue;
    data[o] = Math.round(base[o]! * (1 - s) + tr * s);
    data[o + 1] = Math.round(base[o + 1]! * (1 - s) + tg * s);
    data[o + 2] = Math.round(base[o + 2]! * (1 - s) + tb * s);
  }
  return { data, width: w, height: h, channels: 3 };
}
