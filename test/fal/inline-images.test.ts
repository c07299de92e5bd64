import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { extractInlineImages, inlineDataUri, PLACEHOLDER_SCHEME } from '../../src/fal/inline-images.js';

/** The body cut into chunks of `size` bytes, as a socket might deliver it. */
function chunked(text: string, size: number): Buffer[] {
  const all = Buffer.from(text, 'utf8');
  const out: Buffer[] = [];
  for (let i = 0; i < all.length; i += size) out.push(Buffer.from(all.subarray(i, i + size)));
  return out;
}

const b64 = (n: number) => randomBytes(n).toString('base64');

/** What the scanner's output must mean: the original JSON, with each cut data URI's payload where its placeholder is. */
function restore(json: Buffer, images: Map<string, { prefix: string; parts: Buffer[] }>): unknown {
  let text = json.toString('utf8');
  for (const [placeholder, img] of images) text = text.replace(placeholder, img.prefix + Buffer.concat(img.parts).toString('latin1'));
  return JSON.parse(text);
}

describe('extractInlineImages', () => {
  it('cuts a data URI payload out at every chunk boundary, leaving valid JSON that means the same', () => {
    const payload = b64(300);
    const text = JSON.stringify({ images: [{ url: `data:image/png;base64,${payload}`, width: 8, height: 8, content_type: 'image/png' }], seed: 7, prompt: 'a "quoted" \\ prompt' });
    for (let size = 1; size <= text.length; size += size < 40 ? 1 : 37) {
      const out = extractInlineImages(chunked(text, size));
      assert.ok(out, `chunk size ${size}`);
      assert.equal(out.images.size, 1);
      const [placeholder, img] = [...out.images][0]!;
      assert.ok(placeholder.startsWith(PLACEHOLDER_SCHEME));
      assert.equal(img.mediaType, 'image/png');
      assert.equal(img.prefix, 'data:image/png;base64,');
      assert.equal(img.length, payload.length);
      assert.equal(Buffer.concat(img.parts).toString('latin1'), payload, `chunk size ${size}`);
      const small = JSON.parse(out.json.toString('utf8')) as { images: Array<{ url: string }> };
      assert.equal(small.images[0]!.url, placeholder);
      assert.deepEqual(restore(out.json, out.images), JSON.parse(text));
      assert.equal(inlineDataUri(img), `data:image/png;base64,${payload}`);
    }
  });

  it('shares the chunks instead of copying them', () => {
    const chunks = chunked(JSON.stringify({ images: [{ url: `data:image/png;base64,${b64(3000)}` }] }), 512);
    const out = extractInlineImages(chunks)!;
    const [img] = [...out.images.values()];
    for (const part of img!.parts) assert.ok(chunks.some((c) => c.buffer === part.buffer), 'each part is a view of a chunk');
    assert.equal(out.original, chunks);
  });

  it('cuts several images, in order, with fal-style spacing', () => {
    const payloads = [b64(100), b64(200), b64(50)];
    // Python's json.dumps puts a space after ":" and ",".
    const text = `{"images": [${payloads.map((p, k) => `{"url": "data:image/jpeg;base64,${p}", "width": ${k}}`).join(', ')}], "seed": 1}`;
    const out = extractInlineImages(chunked(text, 64))!;
    const small = JSON.parse(out.json.toString()) as { images: Array<{ url: string; width: number }> };
    assert.deepEqual(small.images.map((i) => Buffer.concat(out.images.get(i.url)!.parts).toString()), payloads);
    assert.deepEqual(small.images.map((i) => i.width), [0, 1, 2]);
    assert.equal(out.images.get(small.images[0]!.url)!.mediaType, 'image/jpeg');
  });

  it('leaves a data URI with a JSON escape in its payload to the parser', () => {
    // `\/` is a legal escape of "/": the value differs from the bytes, so it must not be cut.
    const text = `{"images":[{"url":"data:image/png;base64,AAAA\\/BBBB","width":1,"height":1}]}`;
    assert.equal(JSON.parse(text).images[0].url, 'data:image/png;base64,AAAA/BBBB');
    assert.equal(extractInlineImages(chunked(text, 7)), null);
  });

  it('leaves a data URI with an escaped header, or a non-base64 payload, or an empty one', () => {
    for (const url of ['data:image\\/png;base64,AAAA', 'data:image/png;base64,AA AA', 'data:image/png;base64,AA%AA', 'data:image/png;base64,', 'data:image/png,AAAA', 'data:,AAAA']) {
      const text = `{"images":[{"url":"${url}"}]}`;
      JSON.parse(text);
      assert.equal(extractInlineImages(chunked(text, 5)), null, url);
    }
  });

  it('cuts what it can and leaves the rest: one escaped image, one clean', () => {
    const clean = b64(90);
    const text = `{"images":[{"url":"data:image/png;base64,AB\\u0043D"},{"url":"data:image/png;base64,${clean}"}]}`;
    const out = extractInlineImages(chunked(text, 11))!;
    const small = JSON.parse(out.json.toString()) as { images: Array<{ url: string }> };
    assert.equal(small.images[0]!.url, 'data:image/png;base64,ABCD');
    assert.equal(Buffer.concat(out.images.get(small.images[1]!.url)!.parts).toString(), clean);
  });

  it('is not fooled by data URIs inside other strings, or by escaped quotes and backslashes', () => {
    const payload = b64(60);
    const text = JSON.stringify({
      prompt: 'say "data:image/png;base64,QUFB" twice',
      trailing: 'ends with a backslash \\',
      nested: { quote: '"', url: '\\"data:image/png;base64,QUFB' },
      images: [{ url: `data:image/png;base64,${payload}` }],
    });
    const out = extractInlineImages(chunked(text, 3))!;
    assert.equal(out.images.size, 1);
    const parsed = JSON.parse(out.json.toString()) as Record<string, unknown> & { images: Array<{ url: string }> };
    const original = JSON.parse(text) as Record<string, unknown>;
    assert.deepEqual({ ...parsed, images: undefined }, { ...original, images: undefined });
    assert.equal(Buffer.concat(out.images.get(parsed.images[0]!.url)!.parts).toString(), payload);
  });

  it('returns null for bodies with no data URI, or that are not JSON it can follow', () => {
    assert.equal(extractInlineImages(chunked('{"images":[{"url":"https://v3.fal.media/files/x.png"}]}', 4)), null);
    assert.equal(extractInlineImages([]), null);
    assert.equal(extractInlineImages(chunked('{"images":[{"url":"data:image/png;base64,AAAA', 4)), null, 'unterminated data URI');
    assert.equal(extractInlineImages(chunked('{"a":"unterminated \\"', 4)), null);
  });
});
