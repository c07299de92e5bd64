import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { imagePath, parseImageToken, promptHash, renderImage, type RenderSpec } from '../../src/emulator/images.js';
import { emulator, falClient, raw, TURBO } from './helpers.js';

async function download(url: string): Promise<Buffer> {
  const res = await fetch(url);
  assert.equal(res.status, 200, url);
  return Buffer.from(await res.arrayBuffer());
}

describe('emulated images', () => {
  const formats = [
    { format: 'png', sharpFormat: 'png', mime: 'image/png' },
    { format: 'jpeg', sharpFormat: 'jpeg', mime: 'image/jpeg' },
    { format: 'webp', sharpFormat: 'webp', mime: 'image/webp' },
  ] as const;
  const sizes = [
    { image_size: 'square_hd', width: 1024, height: 1024 },
    { image_size: 'portrait_16_9', width: 576, height: 1024 },
    { image_size: { width: 333, height: 97 }, width: 333, height: 97 },
  ] as const;

  for (const f of formats) {
    test(`${f.format}: exact dimensions and format for presets and custom sizes`, async (t) => {
      const emu = await emulator(t);
      const fal = falClient(emu);
      for (const s of sizes) {
        const result = await fal.subscribe(TURBO, {
          input: { prompt: 'dims', image_size: s.image_size as any, output_format: f.format, seed: 1 },
          pollInterval: 20,
        });
        const image = (result.data as any).images[0];
        assert.equal(image.content_type, f.mime);
        assert.equal(image.width, s.width);
        assert.equal(image.height, s.height);
        const res = await fetch(image.url);
        assert.equal(res.headers.get('content-type'), f.mime);
        const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
        assert.equal(meta.format, f.sharpFormat);
        assert.equal(meta.width, s.width);
        assert.equal(meta.height, s.height);
      }
    });
  }

  test('deterministic for prompt+seed+index+size+format; each index differs', async (t) => {
    const emu = await emulator(t);
    const fal = falClient(emu);
    const input = { prompt: 'same', seed: 42, num_images: 2, image_size: 'square' as const };
    const [a, b] = await Promise.all([fal.subscribe(TURBO, { input, pollInterval: 20 }), fal.subscribe(TURBO, { input, pollInterval: 20 })]);
    const ua = (a.data as any).images.map((i: any) => i.url);
    const ub = (b.data as any).images.map((i: any) => i.url);
    assert.deepEqual(ua, ub);
    const [a0, a1] = (await Promise.all(ua.map(download))) as [Buffer, Buffer];
    // Buffer.equals, not deepEqual: assert's diff of two large buffers can take minutes.
    assert.ok(!a0.equals(a1), 'different index, different bytes');
    const spec: RenderSpec = { kind: 'e', width: 512, height: 512, format: 'png', seed: 42, index: 0, promptHash: promptHash('same') };
    assert.ok((await renderImage(spec)).equals(a0), 'same parameters, same bytes');
    assert.ok(!(await renderImage({ ...spec, seed: 43 })).equals(a0));
    assert.ok(!(await renderImage({ ...spec, promptHash: promptHash('other') })).equals(a0));
  });

  test('random seed when none is given, and it is reported', async (t) => {
    const emu = await emulator(t);
    const fal = falClient(emu);
    const r1 = await fal.subscribe(TURBO, { input: { prompt: 'p', image_size: 'square' }, pollInterval: 20 });
    const r2 = await fal.subscribe(TURBO, { input: { prompt: 'p', image_size: 'square' }, pollInterval: 20 });
    assert.equal(typeof (r1.data as any).seed, 'number');
    assert.notEqual((r1.data as any).seed, (r2.data as any).seed);
  });

  test('entropy images weigh like real ones', async () => {
    const spec: RenderSpec = { kind: 'e', width: 1024, height: 768, format: 'png', seed: 5, index: 0, promptHash: promptHash('x') };
    const png = await renderImage(spec);
    const jpeg = await renderImage({ ...spec, format: 'jpeg' });
    assert.ok(png.length > 800 * 1024, `png ${png.length}`);
    assert.ok(jpeg.length > 50 * 1024, `jpeg ${jpeg.length}`);
  });

  test('visibly stamped: a white-on-dark text band across the middle', async () => {
    const { data, info } = await sharp(await renderImage({ kind: 'c', width: 400, height: 300, format: 'png' }))
      .raw()
      .toBuffer({ resolveWithObject: true });
    const px = (x: number, y: number) => data[(y * info.width + x) * info.channels]!;
    let white = 0;
    for (let x = 0; x < info.width; x++) for (let y = 100; y < 200; y++) if (px(x, y) > 240) white++;
    assert.ok(white > 500, `text pixels: ${white}`);
    assert.ok(px(2, 2) > 60 && px(2, 2) < 200, 'background is not the text colour');
  });

  test('sync_mode returns data URIs with the image inline', async (t) => {
    const emu = await emulator(t);
    const result = await falClient(emu).subscribe(TURBO, {
      input: { prompt: 'inline', sync_mode: true, output_format: 'webp', image_size: { width: 128, height: 64 }, num_images: 2 },
      pollInterval: 20,
    });
    for (const im of (result.data as any).images) {
      const m = /^data:image\/webp;base64,(.+)$/.exec(im.url);
      assert.ok(m, 'data URI');
      const bytes = Buffer.from(m[1]!, 'base64');
      assert.equal(im.file_size, bytes.length);
      const meta = await sharp(bytes).metadata();
      assert.equal(meta.format, 'webp');
      assert.equal(meta.width, 128);
      assert.equal(meta.height, 64);
    }
  });

  test('cheap mode: one cached image per size and format', async (t) => {
    const emu = await emulator(t, { imageMode: 'cheap' });
    const fal = falClient(emu);
    const a = await fal.subscribe(TURBO, { input: { prompt: 'one', num_images: 2, image_size: 'square' }, pollInterval: 20 });
    const b = await fal.subscribe(TURBO, { input: { prompt: 'two', image_size: 'square' }, pollInterval: 20 });
    const images = [...(a.data as any).images, ...(b.data as any).images];
    // One rendering: the URLs differ only in their expiry (jobs may complete in different seconds).
    const rendering = (url: string) => {
      const { x: _expiry, ...spec } = JSON.parse(Buffer.from(url.split('/').pop()!.split('.')[0]!, 'base64url').toString());
      return JSON.stringify(spec);
    };
    assert.equal(new Set(images.map((i: any) => rendering(i.url))).size, 1);
    assert.equal(new Set(images.map((i: any) => i.file_name)).size, 1);
    const urls = images.map((i: any) => i.url as string);
    const bytes = await download(urls[0]!);
    assert.ok(bytes.length < 50 * 1024);
    const meta = await sharp(bytes).metadata();
    assert.equal(meta.width, 512);
  });

  test('URLs are stateless: another emulator (a restart) serves the same bytes', async (t) => {
    const one = await emulator(t);
    const two = await emulator(t);
    const r = await falClient(one).subscribe(TURBO, { input: { prompt: 'forever', seed: 3, image_size: 'square' }, pollInterval: 20 });
    const url = (r.data as any).images[0].url as string;
    const moved = url.replace(one.url, two.url);
    assert.ok((await download(moved)).equals(await download(url)));
    assert.equal((await raw(two, 'GET', 'v3.fal.media/files/emulated/garbage.png', { key: null })).status, 404);
  });

  test('URL tokens round-trip and reject tampering', () => {
    const spec: RenderSpec = { kind: 'e', width: 10, height: 20, format: 'jpeg', seed: -5, index: 3, promptHash: promptHash('q') };
    const tail = imagePath(spec).split('/').pop()!;
    assert.deepEqual(parseImageToken(tail), spec);
    assert.equal(parseImageToken(tail.replace('.jpg', '.png')), null);
    assert.equal(parseImageToken(`${Buffer.from('{"v":1,"k":"e","w":0,"h":1,"f":"png"}').toString('base64url')}.png`), null);
  });
});
