import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { b64Item } from '../../src/images/b64-item.js';
import { createFileUrls } from '../../src/images/file-urls.js';
import { createMedia } from '../../src/images/media.js';

const fileUrls = createFileUrls({ secret: 'test-secret-test-secret-test-secret', ttlS: 3600 });

/**
 * media.base64 for an image fal sent as a URL: the download is encoded to
 * base64 Buffers as it arrives (three bytes at a time make four characters),
 * never held as one string. Whatever the chunking, the text must be exactly
 * Buffer.toString('base64') of the bytes, padding included.
 */

const resolve = async (): Promise<string[]> => ['93.184.216.34'];

/** Serves `bytes` in chunks of the given sizes, cycling. */
function chunkedFetch(bytes: Buffer, sizes: number[]): typeof fetch {
  return (async () => {
    let at = 0;
    let k = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (at >= bytes.length) return c.close();
        const n = sizes[k++ % sizes.length]!;
        c.enqueue(new Uint8Array(bytes.subarray(at, at + n)));
        at += n;
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'image/png' } });
  }) as typeof fetch;
}

describe('media.base64 of a downloaded image', () => {
  for (const length of [0, 1, 2, 3, 4, 5, 1000, 65_537]) {
    for (const sizes of [[1], [2], [1, 4, 2], [7], [65_536]]) {
      it(`${length} bytes in chunks of ${sizes.join('/')}`, async () => {
        const bytes = randomBytes(length);
        const media = createMedia({ fileUrls, falBaseUrl: undefined, fetchImpl: chunkedFetch(bytes, sizes), resolve });
        const out = await media.base64('https://v3.fal.media/files/x.png');
        assert.notEqual(typeof out, 'string', 'Buffers, not a string');
        if (typeof out === 'string') return;
        const text = Buffer.concat(out.parts as Buffer[]).toString('latin1');
        assert.equal(text, bytes.toString('base64'));
        assert.equal(out.length, text.length);
        assert.equal(b64Item(await createMedia({ fileUrls, falBaseUrl: undefined, fetchImpl: chunkedFetch(bytes, sizes), resolve }).base64('https://v3.fal.media/files/x.png')).b64_json, text);
      });
    }
  }

  it('a data URI stays the string slice it was', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: undefined, resolve });
    assert.equal(await media.base64('data:image/png;base64,QUJD'), 'QUJD');
  });
});
