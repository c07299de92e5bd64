import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError, type FalGateway } from '../../src/fal/gateway.js';
import { dimensionsFromUrl, dimensionsOf, dimensionsOfBase64, HEADER_MAX_BYTES } from '../../src/fal/image-dimensions.js';

/**
 * Output images without width/height are sized from their own header before
 * anything is priced (src/fal/image-dimensions.ts, applied in the gateway's
 * result): from the bytes of a sync_mode data URI, and from the first bytes of
 * a URL, never the whole image.
 */

const FORMATS = ['png', 'jpeg', 'webp'] as const;

async function image(format: (typeof FORMATS)[number], width: number, height: number, exifBytes = 0): Promise<Buffer> {
  let img = sharp({ create: { width, height, channels: 3, background: '#3a6' } });
  if (exifBytes > 0) img = img.withMetadata({ exif: { IFD0: { ImageDescription: 'x'.repeat(exifBytes) } } });
  return img.toFormat(format).toBuffer();
}

describe('reading an image header', () => {
  for (const format of FORMATS) {
    it(`${format}: the size from the whole file, and from the prefix its header needs; never from too few bytes`, async () => {
      const bytes = await image(format, 640, 352);
      assert.deepEqual(dimensionsOf(bytes), { width: 640, height: 352 });
      let needed = 0;
      for (let n = 1; n <= Math.min(bytes.length, 2048); n++) {
        // A fresh copy, as a streamed chunk would be: no bytes of the whole file behind it.
        const found = dimensionsOf(Uint8Array.from(bytes.subarray(0, n)));
        if (!found) continue;
        needed ||= n;
        assert.deepEqual(found, { width: 640, height: 352 }, `the first ${n} bytes give another size`);
      }
      assert.ok(needed > 0, `${format}: the header is in the first 2048 bytes`);
      assert.equal(dimensionsOf(bytes.subarray(0, 8)), undefined);
    });
  }

  it('base64 text: the first characters when the header is there, all of it when a large EXIF block comes first', async () => {
    const small = await image('jpeg', 300, 200);
    assert.deepEqual(dimensionsOfBase64(small.toString('base64')), { width: 300, height: 200 });
    // The jpeg size marker lies after 60 KB of EXIF: past the first 64 Ki base64 characters (48 KiB).
    const late = await image('jpeg', 320, 240, 60_000);
    const text = late.toString('base64');
    assert.ok(text.length > 70_000);
    const pieces = [Buffer.from(text.slice(0, 1001)), Buffer.from(text.slice(1001, 50_003)), Buffer.from(text.slice(50_003))];
    assert.deepEqual(dimensionsOfBase64(pieces), { width: 320, height: 240 }, 'pieces cut anywhere');
    assert.throws(() => dimensionsOfBase64(Buffer.from('not an image at all').toString('base64')), /no readable png, jpeg or webp header/);
  });

  describe('from a URL', () => {
    let server: Server;
    let base: string;
    const seen: Array<{ path: string; range: string | undefined }> = [];
    let big: Buffer;
    before(async () => {
      big = await image('png', 1500, 1000);
      server = createServer((req, res) => {
        seen.push({ path: req.url!, range: req.headers.range });
        if (req.url === '/endless.png') {
          // The header, then a body that never ends: only a reader that stops at the header can finish.
          res.writeHead(200, { 'content-type': 'image/png' });
          res.write(big.subarray(0, 4096));
          return;
        }
        if (req.url === '/ranged.png') {
          const m = /^bytes=0-(\d+)$/.exec(req.headers.range ?? '');
          const end = m ? Math.min(Number(m[1]), big.length - 1) : big.length - 1;
          res.writeHead(m ? 206 : 200, { 'content-type': 'image/png', 'content-length': String(end + 1) });
          res.end(big.subarray(0, end + 1));
          return;
        }
        if (req.url === '/garbage') {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          res.end(Buffer.alloc(200_000, 7));
          return;
        }
        res.writeHead(404).end();
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });

    it('asks for a range, and a server that honours it sends at most that', async () => {
      assert.deepEqual(await dimensionsFromUrl(`${base}/ranged.png`, { fetch }), { width: 1500, height: 1000 });
      assert.equal(seen.find((s) => s.path === '/ranged.png')?.range, `bytes=0-${HEADER_MAX_BYTES - 1}`);
    });

    it('stops reading once the header parsed, even from a body that never ends', async () => {
      assert.deepEqual(await dimensionsFromUrl(`${base}/endless.png`, { fetch, signal: AbortSignal.timeout(30_000) }), { width: 1500, height: 1000 });
    });

    it('an error answer, or bytes with no header within the limit, is a DimensionsError', async () => {
      await assert.rejects(dimensionsFromUrl(`${base}/missing.png`, { fetch }), { name: 'DimensionsError', message: /HTTP 404/ });
      await assert.rejects(dimensionsFromUrl(`${base}/garbage`, { fetch, maxBytes: 100_000 }), { name: 'DimensionsError', message: /first 100000 bytes/ });
    });
  });
});

describe('the gateway sizes fal output images that lack width/height (emulator fault omit_dimensions)', () => {
  let emu: Emulator;
  let fal: FalGateway;
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 20 });
    fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url });
  });
  after(() => emu.close());

  async function generate(gateway: FalGateway, prompt: string, input: Record<string, unknown>) {
    emu.armFault({ kind: 'omit_dimensions', prompt_contains: prompt });
    const { falRequestId } = await gateway.submit('fal-ai/z-image/turbo', { prompt, ...input });
    await gateway.waitForCompletion('fal-ai/z-image/turbo', falRequestId, { signal: AbortSignal.timeout(30_000) });
    return { falRequestId, result: () => gateway.result('fal-ai/z-image/turbo', falRequestId) };
  }

  for (const format of FORMATS) {
    for (const sync of [false, true]) {
      it(`${format}, ${sync ? 'sync_mode data URIs' : 'URLs'}: every image gets the size it was rendered at`, async () => {
        const prompt = `no dims ${format} ${sync}`;
        const job = await generate(fal, prompt, { image_size: { width: 640, height: 384 }, num_images: 2, output_format: format, sync_mode: sync });
        const r = await job.result();
        assert.equal(r.output.images.length, 2);
        for (const img of r.output.images) {
          assert.equal(img.width, 640);
          assert.equal(img.height, 384);
          assert.equal(img.url.startsWith('http'), !sync);
        }
        assert.equal(r.billableUnits, emu.billing().find((b) => b.request_id === job.falRequestId)?.units);
      });
    }
  }

  it('sizes fal sent are kept as they are, and nothing is fetched for them', async () => {
    let fetched = 0;
    const counting = createFalGateway({ credentials: 'k:s', baseUrl: emu.url, fetchFor: (phase) => (phase === 'other' ? (i, init) => (fetched++, fetch(i, init)) : undefined) });
    const { falRequestId } = await counting.submit('fal-ai/z-image/turbo', { prompt: 'sized by fal', image_size: 'square' });
    await counting.waitForCompletion('fal-ai/z-image/turbo', falRequestId, { signal: AbortSignal.timeout(30_000) });
    const r = await counting.result('fal-ai/z-image/turbo', falRequestId);
    assert.deepEqual([r.output.images[0]!.width, r.output.images[0]!.height], [512, 512]);
    assert.equal(fetched, 0);
  });

  it('an image that cannot be read: a FalCallError that keeps the completed output and fal\'s units', async () => {
    const gone = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      fetchFor: (phase) => (phase === 'other' ? async () => new Response('gone', { status: 404 }) : undefined),
    });
    const job = await generate(gone, 'no dims unreadable', { image_size: 'square' });
    const err = await job.result().then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.phase, 'result');
    assert.equal(err.kind, 'bad_response');
    assert.equal(err.status, 200, 'fal answered the result: the job completed');
    assert.equal(err.falRequestId, job.falRequestId);
    assert.match(err.message, /image 0 has no width\/height and the image could not be fetched: HTTP 404/);
    const billed = emu.billing().find((b) => b.request_id === job.falRequestId);
    assert.ok(billed && billed.units !== '0');
    assert.equal(err.billableUnits, billed.units, 'what fal billed travels with the error');
    assert.equal((err.output as { images: unknown[] }).images.length, 1, 'the output is not lost');
  });
});
