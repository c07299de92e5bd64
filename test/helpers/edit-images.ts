/** Images for edit tests: an input of two flat halves, masks in OpenAI's form (transparent = edit), and pixel reads. */
import sharp from 'sharp';

export const W = 256;
export const H = 192;
export const RED = [200, 30, 30];
export const BLUE = [30, 30, 200];

/** Left half red, right half blue. */
export async function inputPng(w = W, h = H): Promise<Buffer> {
  const raw = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(x < w / 2 ? RED : BLUE, (y * w + x) * 3);
  return sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
}

/** OpenAI's mask: fully transparent on the left half (the area to edit), opaque elsewhere. */
export async function openAiMask(w = W, h = H): Promise<Buffer> {
  const raw = Buffer.alloc(w * h * 4, 255);
  for (let y = 0; y < h; y++) for (let x = 0; x < w / 2; x++) raw[(y * w + x) * 4 + 3] = 0;
  return sharp(raw, { raw: { width: w, height: h, channels: 4 } }).png().toBuffer();
}

export interface Pixels {
  data: Buffer;
  width: number;
  height: number;
}

export async function pixelsOf(bytes: Buffer): Promise<Pixels> {
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

export function at(img: Pixels, x: number, y: number): number[] {
  const o = (y * img.width + x) * 3;
  return [...img.data.subarray(o, o + 3)];
}

/** Largest channel difference between `img` and `rgb` over a rectangle. */
export function maxDiff(img: Pixels, rgb: number[], x0: number, y0: number, x1: number, y1: number): number {
  let worst = 0;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const p = at(img, x, y);
    for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(p[c]! - rgb[c]!));
  }
  return worst;
}
