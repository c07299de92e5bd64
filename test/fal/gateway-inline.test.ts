import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import v8 from 'node:v8';
import vm from 'node:vm';
import { createFalGateway } from '../../src/fal/gateway.js';
import { PLACEHOLDER_SCHEME } from '../../src/fal/inline-images.js';

/**
 * FalGateway.result() through the real @fal-ai/client and the call's own fetch, with
 * fal's answer served by a stub fetch in small chunks: which data URIs come
 * back as Buffers, and every case that must fall back to the plain parse.
 */

const ENDPOINT = 'fal-ai/z-image/turbo';
const ID = 'req-0001';

interface Served {
  body: string;
  contentType?: string;
  /** Break the body off after this many bytes (the stream errors). */
  breakAfter?: number;
}

function stubFal(answers: Served[]): { fetchImpl: typeof fetch; calls: string[] } {
  const calls: string[] = [];
  const fetchImpl = (async (input: string | URL | Request) => {
    calls.push(String(input));
    const a = answers[Math.min(calls.length - 1, answers.length - 1)]!;
    const bytes = Buffer.from(a.body, 'utf8');
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (a.breakAfter !== undefined && at >= a.breakAfter) {
          controller.error(new TypeError('terminated'));
          return;
        }
        if (at >= bytes.length) {
          controller.close();
          return;
        }
        controller.enqueue(new Uint8Array(bytes.subarray(at, at + 97)));
        at += 97;
      },
    });
    return new Response(stream, {
      status: 200,
      headers: { 'content-type': a.contentType ?? 'application/json', 'x-fal-request-id': ID, 'x-fal-billable-units': '1', 'content-length': String(bytes.length) },
    });
  }) as typeof fetch;
  return { fetchImpl, calls };
}

function gateway(answers: Served[]) {
  const stub = stubFal(answers);
  const fal = createFalGateway({ credentials: 'k', fetchImpl: stub.fetchImpl, retry: { result: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } } });
  return { fal, calls: stub.calls };
}

const b64 = (n: number) => randomBytes(n).toString('base64');
const image = (url: string) => ({ url, width: 64, height: 64, content_type: 'image/png' });

describe('FalGateway.result with inline images', () => {
  it('returns each data URI payload as Buffers, the url as its placeholder', async () => {
    const payloads = [b64(5000), b64(7000)];
    const body = JSON.stringify({ images: payloads.map((p) => image(`data:image/png;base64,${p}`)), seed: 42, has_nsfw_concepts: [false, false] });
    const { fal } = gateway([{ body }]);
    const r = await fal.result(ENDPOINT, ID);
    assert.equal(r.billableUnits, '1');
    assert.equal(r.output.seed, 42);
    assert.equal(r.inlineImages?.size, 2);
    r.output.images.forEach((img, k) => {
      assert.ok(img.url.startsWith(PLACEHOLDER_SCHEME));
      const inline = r.inlineImages!.get(img.url)!;
      assert.equal(Buffer.concat(inline.parts).toString('latin1'), payloads[k]);
      assert.equal(inline.length, payloads[k]!.length);
      assert.equal(img.width, 64);
    });
  });

  it('falls back to the plain parse when the payload carries a JSON escape', async () => {
    const payload = b64(3000);
    const escaped = JSON.stringify({ images: [image(`data:image/png;base64,${payload}`)] }).replaceAll('/', '\\/');
    const { fal } = gateway([{ body: escaped }]);
    const r = await fal.result(ENDPOINT, ID);
    assert.equal(r.inlineImages, undefined);
    assert.equal(r.output.images[0]!.url, `data:image/png;base64,${payload}`);
  });

  it('falls back to the plain parse when a data URI is somewhere else than an image url', async () => {
    const body = JSON.stringify({ images: [image(`data:image/png;base64,${b64(900)}`)], input_echo: { image_url: `data:image/png;base64,${b64(30)}` } });
    const { fal } = gateway([{ body }]);
    const r = await fal.result(ENDPOINT, ID);
    assert.equal(r.inlineImages, undefined);
    assert.deepEqual(r.output, JSON.parse(body));
  });

  it('leaves image URLs and non-JSON bodies alone', async () => {
    const body = JSON.stringify({ images: [image('https://v3.fal.media/files/x.png')] });
    const r = await gateway([{ body }]).fal.result(ENDPOINT, ID);
    assert.equal(r.inlineImages, undefined);
    assert.deepEqual(r.output, JSON.parse(body));
    await assert.rejects(gateway([{ body: '<html></html>', contentType: 'text/html' }]).fal.result(ENDPOINT, ID), /no images array/);
  });

  it('asks again when the body breaks off mid-way', async () => {
    const payload = b64(4000);
    const body = JSON.stringify({ images: [image(`data:image/png;base64,${payload}`)] });
    const { fal, calls } = gateway([{ body, breakAfter: 1000 }, { body }]);
    const r = await fal.result(ENDPOINT, ID);
    assert.equal(calls.length, 2);
    assert.equal(Buffer.concat(r.inlineImages!.get(r.output.images[0]!.url)!.parts).toString(), payload);
  });

  it('gives up as a network error when every attempt breaks off', async () => {
    const body = JSON.stringify({ images: [image(`data:image/png;base64,${b64(4000)}`)] });
    const { fal, calls } = gateway([{ body, breakAfter: 500 }]);
    await assert.rejects(fal.result(ENDPOINT, ID), (err: unknown) => (err as { kind?: string }).kind === 'network' && (err as { phase?: string }).phase === 'result');
    assert.equal(calls.length, 3);
  });

  it('does not keep the body alive through the call\'s async context once the result is taken', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const body = JSON.stringify({ images: [image(`data:image/png;base64,${b64(30_000)}`)] });
    const served: Array<WeakRef<ArrayBufferLike>> = [];
    let keeper: NodeJS.Timeout | undefined;
    const fetchImpl = (async () => {
      // Made inside the call, like a pooled socket or a keep-alive timer: it
      // keeps the call's AsyncLocalStorage store (the capture) reachable.
      keeper ??= setInterval(() => {}, 1 << 30);
      const bytes = Buffer.from(body);
      let at = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(c) {
          if (at >= bytes.length) return c.close();
          const chunk = new Uint8Array(bytes.subarray(at, at + 4096));
          served.push(new WeakRef(chunk.buffer));
          c.enqueue(chunk);
          at += 4096;
        },
      });
      return new Response(stream, { status: 200, headers: { 'content-type': 'application/json', 'x-fal-request-id': ID } });
    }) as typeof fetch;
    try {
      const fal = createFalGateway({ credentials: 'k', fetchImpl });
      let r: Awaited<ReturnType<typeof fal.result>> | undefined = await fal.result(ENDPOINT, ID);
      assert.equal(r.inlineImages?.size, 1);
      r = undefined;
      for (let i = 0; i < 3; i++) {
        await new Promise((done) => setImmediate(done));
        gc();
      }
      assert.ok(served.length > 5);
      assert.deepEqual(served.filter((w) => w.deref() !== undefined).length, 0, 'every chunk of the body was collected');
    } finally {
      clearInterval(keeper);
    }
  });
});
