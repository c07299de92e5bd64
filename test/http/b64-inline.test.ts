import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';

/**
 * End to end, real HTTP both ways: b64_json answers are written from the
 * Buffers of fal's result body (src/fal/inline-images.ts,
 * src/http/images-json.ts). Each answer must decode to exactly the image the
 * emulator produced for that job, be valid JSON with a right Content-Length
 * and the ETag Express would have computed, and the fall-backs (escaped JSON,
 * fal ignoring sync_mode) must give the same bytes.
 */

const PNG_MAGIC = '89504e470d0a1a0a';

interface Answer {
  status: number;
  headers: Headers;
  raw: Buffer;
  json: { data: Array<{ b64_json: string }>; meta: { fal_request_ids: string[]; images: Array<{ width: number; height: number }> } };
}

async function generate(t: TestService, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${t.url}/v1/images/generations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const raw = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, raw, json: JSON.parse(raw.toString('utf8')) as Answer['json'] };
}

/** The images the emulator made for a job, as its own result body carries them (data URIs, sync_mode). */
async function emulatorImages(t: TestService, falRequestId: string): Promise<Buffer[]> {
  const job = t.emulator.job(falRequestId);
  assert.ok(job, 'the emulator knows the job');
  const app = job.endpoint.split('/').slice(0, 2).join('/');
  const res = await fetch(`${t.emulator.url}/queue.fal.run/${app}/requests/${falRequestId}`, { headers: { authorization: 'Key fal-test-key' } });
  assert.equal(res.status, 200);
  const out = (await res.json()) as { images: Array<{ url: string }> };
  return Promise.all(
    out.images.map(async (i) => {
      if (i.url.startsWith('data:')) return Buffer.from(i.url.slice(i.url.indexOf(',') + 1), 'base64');
      // A job that ignored sync_mode answers URLs; the bytes are the same image.
      return Buffer.from(await (await fetch(i.url)).arrayBuffer());
    }),
  );
}

/** What Express's default (weak) ETag is for this body. */
function expressEtag(raw: Buffer): string {
  return `W/"${raw.length.toString(16)}-${createHash('sha1').update(raw).digest('base64').slice(0, 27)}"`;
}

function assertWellFormed(a: Answer): void {
  assert.equal(a.status, 200, a.raw.toString('utf8', 0, 300));
  assert.equal(a.headers.get('content-length'), String(a.raw.length));
  assert.equal(a.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.equal(a.headers.get('etag'), expressEtag(a.raw));
  assert.ok(a.headers.get('x-request-id'));
  assert.match(a.headers.get('x-usage-cost-usd') ?? '', /^\d+\.\d{6}$/);
  assert.match(a.headers.get('x-usage-credits') ?? '', /^\d+$/);
  assert.equal(a.headers.get('x-fal-request-id'), a.json.meta.fal_request_ids.join(', '));
  // Exactly what JSON.stringify makes of the parsed answer: no stray bytes around the images.
  assert.equal(a.raw.toString('utf8'), JSON.stringify(a.json));
  assertMatchesSchema('images', a.json);
}

describe('b64_json answers written from fal result Buffers', () => {
  let t: TestService;
  /** Per fal result the service fetched: how many of its images came back as Buffers. */
  const inlineCounts = new Map<string, number>();
  before(async () => {
    t = await startTestService({}, { imageMode: 'entropy' });
    // Observe (not replace) the gateway the image service calls, to tell the Buffer path from the fall-back.
    const result = t.service.fal.result.bind(t.service.fal);
    t.service.fal.result = async (...args) => {
      const r = await result(...args);
      inlineCounts.set(r.falRequestId, r.inlineImages?.size ?? 0);
      return r;
    };
  });
  after(async () => {
    await t.close();
  });

  it('one image: decodes to exactly the PNG the emulator produced', async () => {
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'a lighthouse at dawn', image_size: { width: 640, height: 512 }, response_format: 'b64_json', seed: 11 });
    assertWellFormed(a);
    const [expected] = await emulatorImages(t, a.json.meta.fal_request_ids[0]!);
    const got = Buffer.from(a.json.data[0]!.b64_json, 'base64');
    assert.equal(got.subarray(0, 8).toString('hex'), PNG_MAGIC);
    assert.ok(got.length > 50_000, `an entropy image, not a tiny one (${got.length} bytes)`);
    assert.ok(got.equals(expected!), 'the same bytes');
    assert.equal(inlineCounts.get(a.json.meta.fal_request_ids[0]!), 1, 'the image came as Buffers');
    assert.equal(a.json.data[0]!.b64_json, expected!.toString('base64'));
  });

  it('n=3: three images, each the emulator\'s, in order', async () => {
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'three paper boats', n: 3, size: '512x512', response_format: 'b64_json', seed: 3 });
    assertWellFormed(a);
    assert.equal(a.json.data.length, 3);
    const expected = await emulatorImages(t, a.json.meta.fal_request_ids[0]!);
    assert.equal(expected.length, 3);
    assert.notDeepEqual(expected[0], expected[1], 'the images differ, so order is checked');
    assert.equal(inlineCounts.get(a.json.meta.fal_request_ids[0]!), 3);
    a.json.data.forEach((d, k) => assert.ok(Buffer.from(d.b64_json, 'base64').equals(expected[k]!), `image ${k}`));
  });

  it('n above the per-job maximum: images of several fal jobs, in order', async () => {
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'six kites', n: 6, size: '512x512', response_format: 'b64_json', seed: 9 });
    assertWellFormed(a);
    const ids = a.json.meta.fal_request_ids;
    assert.ok(ids.length > 1, 'fanned out');
    const expected = (await Promise.all(ids.map((id) => emulatorImages(t, id)))).flat();
    assert.equal(a.json.data.length, 6);
    a.json.data.forEach((d, k) => assert.ok(Buffer.from(d.b64_json, 'base64').equals(expected[k]!), `image ${k}`));
  });

  it('fal escapes "/" in its JSON: the escaped data URI takes the plain path, same bytes', async () => {
    t.emulator.armFault({ kind: 'escape_slashes' });
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'escaped slashes', n: 2, size: '512x512', response_format: 'b64_json', seed: 5 });
    assertWellFormed(a);
    const id = a.json.meta.fal_request_ids[0]!;
    assert.equal(t.emulator.job(id)?.escape_slashes, true, 'the fault was taken');
    assert.equal(inlineCounts.get(id), 0, 'nothing was cut out of escaped JSON');
    const expected = await emulatorImages(t, id);
    a.json.data.forEach((d, k) => assert.ok(Buffer.from(d.b64_json, 'base64').equals(expected[k]!), `image ${k}`));
  });

  it('fal ignores sync_mode: the downloaded image is encoded into Buffers, same bytes', async () => {
    t.emulator.armFault({ kind: 'ignore_sync_mode' });
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'no data uri', size: '512x512', response_format: 'b64_json', seed: 8 });
    assertWellFormed(a);
    const id = a.json.meta.fal_request_ids[0]!;
    assert.equal(t.emulator.job(id)?.ignore_sync_mode, true);
    assert.equal(inlineCounts.get(id), 0);
    const [expected] = await emulatorImages(t, id);
    assert.ok(Buffer.from(a.json.data[0]!.b64_json, 'base64').equals(expected!));
  });

  it('Idempotency-Key: the first answer and its replay carry the same image', async () => {
    const body = { model: 'alibaba/z-image-turbo', prompt: 'replayed', size: '512x512', response_format: 'b64_json', seed: 21 };
    const first = await generate(t, body, { 'idempotency-key': 'b64-inline-1' });
    assertWellFormed(first);
    const again = await generate(t, body, { 'idempotency-key': 'b64-inline-1' });
    assert.equal(again.status, 200);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(again.json, first.json);
    const [expected] = await emulatorImages(t, first.json.meta.fal_request_ids[0]!);
    assert.ok(Buffer.from(again.json.data[0]!.b64_json, 'base64').equals(expected!));
  });

  it('url answers are unchanged', async () => {
    const a = await generate(t, { model: 'alibaba/z-image-turbo', prompt: 'a url', size: '512x512', seed: 1 });
    assert.equal(a.status, 200);
    assert.equal(a.headers.get('content-length'), String(a.raw.length));
    assert.equal(a.headers.get('etag'), expressEtag(a.raw));
    assert.match((a.json.data[0] as unknown as { url: string }).url, /^http:\/\/127\.0\.0\.1:\d+\/v1\/files\//);
  });
});
