import { test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { emulator, falClient } from './helpers.js';

/** A 256x192 input: left half red, right half blue. */
async function inputPng(): Promise<Buffer> {
  const w = 256;
  const h = 192;
  const raw = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(x < w / 2 ? [200, 30, 30] : [30, 30, 200], (y * w + x) * 3);
  return sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
}

/** fal's mask: white (repaint) on the left half, black elsewhere. */
async function leftMask(): Promise<Buffer> {
  const w = 256;
  const h = 192;
  const raw = Buffer.alloc(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w / 2; x++) raw[y * w + x] = 255;
  return sharp(raw, { raw: { width: w, height: h, channels: 1 } }).png().toBuffer();
}

async function pixels(url: string): Promise<{ data: Buffer; width: number; height: number }> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  const { data, info } = await sharp(Buffer.from(await res.arrayBuffer())).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

const at = (img: { data: Buffer; width: number }, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];

test('image-to-image: the input, at its own size (auto), recoloured by strength and billed at its megapixels', async (t) => {
  const emu = await emulator(t);
  const fal = falClient(emu);
  const imageUrl = await fal.storage.upload(new Blob([await inputPng()], { type: 'image/png' }));
  const r = await fal.subscribe('fal-ai/z-image/turbo/image-to-image', { input: { prompt: 'paint it', image_url: imageUrl, strength: 0.5, seed: 7 } });
  const img = (r.data as { images: Array<{ url: string; width: number; height: number }> }).images[0]!;
  assert.deepEqual([img.width, img.height], [256, 192]);
  const out = await pixels(img.url);
  assert.deepEqual([out.width, out.height], [256, 192]);
  // Top row, away from the EMULATED band: moved half way from the input's red.
  const px = at(out, 10, 2);
  assert.notDeepEqual(px, [200, 30, 30]);
  assert.ok(Math.abs(px[0]! - 200) <= 200 * 0.5 + 2, `recoloured by half at most: ${px}`);
  assert.deepEqual(emu.billing().map((b) => [b.endpoint, b.units, b.usd]), [['fal-ai/z-image/turbo/image-to-image', '1', '0.005']]);
});

test('inpaint: only the white of the mask is repainted; the rest is the input', async (t) => {
  const emu = await emulator(t);
  const fal = falClient(emu);
  const imageUrl = await fal.storage.upload(new Blob([await inputPng()], { type: 'image/png' }));
  const maskUrl = await fal.storage.upload(new Blob([await leftMask()], { type: 'image/png' }));
  const r = await fal.subscribe('fal-ai/z-image/turbo/inpaint', { input: { prompt: 'paint it', image_url: imageUrl, mask_image_url: maskUrl, output_format: 'png' } });
  const out = await pixels((r.data as { images: Array<{ url: string }> }).images[0]!.url);
  assert.notDeepEqual(at(out, 10, 2), [200, 30, 30], 'masked area changed');
  assert.deepEqual(at(out, 200, 2), [30, 30, 200], 'unmasked area kept');
  assert.deepEqual(at(out, 250, 189), [30, 30, 200], 'unmasked area kept');
});

test('an input the emulator cannot download fails the job as fal does (file_download_error), billed as an app error', async (t) => {
  const emu = await emulator(t);
  const fal = falClient(emu);
  await assert.rejects(
    fal.subscribe('fal-ai/z-image/turbo/image-to-image', { input: { prompt: 'x', image_url: 'https://example.invalid/cat.png' } }),
    (err: { status?: number; body?: { detail?: Array<{ type?: string; loc?: unknown[] }> } }) => {
      assert.equal(err.status, 422);
      assert.equal(err.body?.detail?.[0]?.type, 'file_download_error');
      assert.deepEqual(err.body?.detail?.[0]?.loc, ['body', 'image_url']);
      return true;
    },
  );
});
