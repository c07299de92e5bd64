import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';

const auth = { Authorization: `Bearer ${TEST_KEY}` };

async function fetchImage(url: string): Promise<{ format: string | undefined; width: number | undefined; height: number | undefined; bytes: Buffer }> {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  const meta = await sharp(bytes).metadata();
  return { format: meta.format, width: meta.width, height: meta.height, bytes };
}

describe('POST /v1/images/generations through the emulator', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  it('answers a minimal request with one URL image at fal defaults, billed per megapixel', async () => {
    const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'a red fox' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assertMatchesSchema('images', res.body);
    assert.match(res.headers['x-request-id'] as string, /^req_[0-9a-f]{32}$/);
    assert.equal(typeof res.body.created, 'number');
    assert.equal(res.body.data.length, 1);
    const url = res.body.data[0].url as string;
    assert.ok(url.startsWith(`${t.url}/v1/files/`), `image URL on our origin: ${url}`);
    assert.equal(res.body.data[0].b64_json, undefined);
    const img = await fetchImage(url);
    assert.deepEqual([img.format, img.width, img.height], ['png', 1024, 768]);
    // 1024x768 rounds up to 1 MP at $0.005, markup 1.0: 5,000 micro-dollars = 10,000 credits.
    assert.deepEqual(res.body.meta.usage, { credits_used: 10000, tokens_used: 10000, cost_usd: '0.005000' });
    assert.equal(res.headers['x-usage-cost-usd'], '0.005000');
    assert.equal(res.headers['x-usage-credits'], '10000');
    assert.deepEqual(res.body.meta.images, [{ width: 1024, height: 768, content_type: 'image/png', has_nsfw_concept: false }]);
    assert.equal(typeof res.body.meta.seed, 'number');
    assert.equal(res.body.meta.fal_request_id, res.headers['x-fal-request-id']);
    const billed = t.emulator.billing().find((b) => b.request_id === res.body.meta.fal_request_id);
    assert.ok(billed, 'the emulator billed the job');
  });

  it('returns bare base64 of the exact size and format for b64_json', async () => {
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set(auth)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'a lighthouse', response_format: 'b64_json', output_format: 'jpeg', image_size: 'square_hd', seed: 7 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assertMatchesSchema('images', res.body);
    const b64 = res.body.data[0].b64_json as string;
    assert.doesNotMatch(b64, /^data:/);
    const meta = await sharp(Buffer.from(b64, 'base64')).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 1024, 1024]);
    assert.equal(res.body.data[0].url, undefined);
    assert.equal(res.body.meta.seed, 7);
  });

  it('maps OpenAI n and size, returns distinct images and bills every one', async () => {
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set(auth)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'three cats', n: 3, size: '1536x1024', output_format: 'webp' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.data.length, 3);
    const imgs = await Promise.all(res.body.data.map((d: { url: string }) => fetchImage(d.url)));
    for (const i of imgs) assert.deepEqual([i.format, i.width, i.height], ['webp', 1536, 1024]);
    assert.notDeepEqual(imgs[0]!.bytes, imgs[1]!.bytes);
    // 1536x1024 = 1.5 MiB-pixels → 2 MP each × 3 images × $0.005.
    assert.equal(res.body.meta.usage.cost_usd, '0.030000');
    assert.equal(res.body.meta.usage.credits_used, 60000);
    assert.equal(res.body.size, '1536x1024');
  });

  it('prices the LoRA model at its own rate and forwards loras', async () => {
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set(auth)
      .send({
        model: 'alibaba/z-image-turbo-lora',
        prompt: 'portrait',
        image_size: { width: 512, height: 512 },
        loras: [{ path: 'https://example.com/style.safetensors', scale: 0.8 }],
      });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.meta.usage.cost_usd, '0.008500');
    assert.equal(res.body.meta.usage.credits_used, 17000);
  });

  it('adds the prompt-expansion fee when asked', async () => {
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set(auth)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'a house', image_size: 'square', enable_prompt_expansion: true });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.meta.usage.cost_usd, '0.007500');
  });

  it('echoes a sane x-request-id and replaces an unsafe one', async () => {
    const ok = await request(t.url).get('/healthz').set('x-request-id', 'trace-abc-12345');
    assert.equal(ok.headers['x-request-id'], 'trace-abc-12345');
    const bad = await request(t.url).get('/healthz').set('x-request-id', 'bad id with spaces');
    assert.match(bad.headers['x-request-id'] as string, /^req_/);
  });

  it('logs one line per request with ids, model, status and duration, and no key', async () => {
    const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'log me' });
    assert.equal(res.status, 200);
    const id = res.headers['x-request-id'];
    const line = await waitFor(() => t.logs.find((l) => l.msg === 'request' && l.request_id === id));
    assert.equal(line.status, 200);
    assert.equal(line.model, 'alibaba/z-image-turbo');
    assert.equal(line.fal_request_id, res.body.meta.fal_request_id);
    assert.equal(typeof line.duration_ms, 'number');
    assert.ok(!JSON.stringify(t.logs).includes(TEST_KEY), 'the API key never reaches a log');
  });

  it('reports health and readiness', async () => {
    assert.deepEqual((await request(t.url).get('/healthz')).body, { status: 'ok' });
    const ready = await request(t.url).get('/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.body.checks, { upstream: true, storage: true });
  });
});

async function waitFor<T>(fn: () => T | undefined, ms = 2000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
