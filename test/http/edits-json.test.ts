import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createFalClient } from '@fal-ai/client';
import { createRedirectFetch } from '../../src/fal/redirect-fetch.js';
import { createInputUrlPolicy } from '../../src/images/input-urls.js';
import { ApiError } from '../../src/errors.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { BLUE, H, RED, W, inputPng, maxDiff, pixelsOf } from '../helpers/edit-images.js';

/**
 * Edits by URL (aimlapi-style JSON): on /v1/images/edits and as image_url on
 * /v1/images/generations, the URL handed to fal as it is once it passed the
 * address check; the emulator's host is trusted through EDIT_IMAGE_HOSTS_ALLOWED.
 */
describe('edits by URL', () => {
  let t: TestService;
  let imageUrl: string;
  before(async () => {
    t = await startTestService({ EDIT_IMAGE_HOSTS_ALLOWED: '127.0.0.1' });
    const fal = createFalClient({ credentials: 'k', fetch: createRedirectFetch({ baseUrl: t.emulator.url }) });
    imageUrl = await fal.storage.upload(new Blob([await inputPng()], { type: 'image/png' }));
  });
  after(async () => {
    await t.close();
  });

  const post = (path: string, body: unknown) =>
    fetch(`${t.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  for (const path of ['/v1/images/edits', '/v1/images/generations']) {
    it(`${path} with image_url: image-to-image at the input's size, reserved at the largest and charged on what came back`, async () => {
      const res = await post(path, { model: 'alibaba/z-image-turbo', prompt: 'warmer', image_url: imageUrl, strength: 0.5, response_format: 'b64_json' });
      assert.equal(res.status, 200, await res.clone().text());
      const body = (await res.json()) as { data: Array<{ b64_json: string }>; size: string };
      const out = await pixelsOf(Buffer.from(body.data[0]!.b64_json, 'base64'));
      assert.deepEqual([out.width, out.height], [W, H]);
      assert.ok(maxDiff(out, RED, 0, 0, W / 2, 20) > 20 || maxDiff(out, BLUE, W / 2, 0, W, 20) > 20, 'recoloured');
      assert.equal(res.headers.get('x-usage-cost-usd'), '0.005000');
      const job = t.emulator.jobs().at(-1)!;
      assert.equal(job.endpoint, 'fal-ai/z-image/turbo/image-to-image');
      assert.equal(job.input['image_url'], imageUrl);
      assert.equal(job.input['image_size'], 'auto');
    });
  }

  it('streams an edit like a generation', async () => {
    const res = await post('/v1/images/edits', { model: 'alibaba/z-image-turbo', prompt: 'warmer', image_url: imageUrl, stream: true });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const text = await res.text();
    assert.match(text, /event: image_generation.completed/);
  });

  it('a generation without image_url is still text-to-image', async () => {
    const res = await post('/v1/images/generations', { model: 'alibaba/z-image-turbo', prompt: 'a kite', size: '512x512' });
    assert.equal(res.status, 200);
    assert.equal(t.emulator.jobs().at(-1)!.endpoint, 'fal-ai/z-image/turbo');
  });

  it('GET /v1/models lists capabilities and the edit endpoints', async () => {
    const res = await fetch(`${t.url}/v1/models`, { headers: { authorization: `Bearer ${TEST_KEY}` } });
    const list = (await res.json()) as { data: Array<{ id: string; capabilities: string[]; edit_endpoints?: { image_to_image: { endpoint: string } } }> };
    const turbo = list.data.find((m) => m.id === 'alibaba/z-image-turbo')!;
    assert.deepEqual(turbo.capabilities, ['generations', 'edits']);
    assert.equal(turbo.edit_endpoints?.image_to_image.endpoint, 'fal-ai/z-image/turbo/image-to-image');
    assert.deepEqual(list.data.find((m) => m.id === 'flux/dev')!.capabilities, ['generations']);
  });
});

describe('input URL policy', () => {
  const resolver = (answers: Record<string, string[]>) => async (host: string) => {
    if (!answers[host]) throw new Error('ENOTFOUND');
    return answers[host]!;
  };
  const policy = createInputUrlPolicy({ allowed: ['images.internal', '*.trusted.example', '10.1.2.3'], resolve: resolver({ 'cdn.example': ['93.184.215.14'], 'evil.example': ['93.184.215.14', '127.0.0.1'], 'v6.example': ['::ffff:169.254.169.254'] }) });
  const refused: Array<[string, RegExp]> = [
    ['http://cdn.example/a.png', /only https/],
    ['ftp://cdn.example/a.png', /scheme ftp/],
    ['https://user:pw@cdn.example/a.png', /credentials/],
    ['https://127.0.0.1/a.png', /private, loopback/],
    ['https://[::1]/a.png', /private, loopback/],
    ['https://192.168.1.10/a.png', /private, loopback/],
    ['https://evil.example/a.png', /resolves to a private.*127\.0\.0\.1/],
    ['https://v6.example/a.png', /resolves to a private/],
    ['https://nowhere.example/a.png', /could not be resolved/],
    ['not a url', /not an absolute URL/],
  ];
  for (const [url, why] of refused) {
    it(`refuses ${url}`, async () => {
      await assert.rejects(policy.check(url, 'image_url'), (e: unknown) => e instanceof ApiError && e.status === 400 && e.param === 'image_url' && why.test(e.message));
    });
  }
  for (const url of ['https://cdn.example/a.png', 'http://images.internal:8080/a.png', 'http://a.trusted.example/x', 'http://10.1.2.3/x', 'https://93.184.215.14/a.png']) {
    it(`passes ${url}`, async () => assert.equal(await policy.check(url, 'image_url'), new URL(url).href));
  }
});
