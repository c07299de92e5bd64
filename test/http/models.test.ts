import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import request from 'supertest';
import { readFileSync } from 'node:fs';
import AjvModule from 'ajv';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

const Ajv = AjvModule.default ?? AjvModule;
const ajv = new Ajv({ strict: false });
const listSchema = ajv.compile(JSON.parse(readFileSync(new URL('../../schemas/model-list.json', import.meta.url), 'utf8')) as object);

describe('GET /v1/models', () => {
  let t: TestService;
  let client: OpenAI;
  before(async () => {
    t = await startTestService({ PRICE_MARKUP: '1.05' });
    client = new OpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await t.close();
  });

  it('lists every registry model in OpenAI’s shape with limits and pricing (openai SDK models.list)', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.deepEqual(ids.sort(), t.service.registry.list().map((m) => m.id).sort());
    const res = await request(t.url).get('/v1/models').set('Authorization', `Bearer ${TEST_KEY}`);
    const body = res.body as { data: Array<Record<string, any>> };
    assert.ok(listSchema(body), JSON.stringify(listSchema.errors));
    const turbo = body.data.find((m) => m.id === 'alibaba/z-image-turbo')!;
    assert.equal(turbo.object, 'model');
    assert.equal(turbo.type, 'openai/image-generations');
    assert.equal(turbo.endpoint, 'fal-ai/z-image/turbo');
    assert.deepEqual(turbo.pricing, { unit: 'megapixel', usd_per_unit: '0.005', megapixel_pixels: 1048576, rounding: 'ceil_per_image', prompt_expansion_usd: '0.0025', caller_markup: '1.05' });
    assert.equal(turbo.limits.prompt_max_length, 4000);
    assert.equal(turbo.limits.max_loras, 0);
    assert.equal(turbo.limits.side_multiple_of, 32);
    assert.equal(turbo.limits.min_inference_steps, 1);
    assert.equal(turbo.limits.max_inference_steps, 8);
    const lora = body.data.find((m) => m.id === 'alibaba/z-image-turbo-lora')!;
    assert.equal(lora.limits.max_loras, 3);
  });

  it('retrieves one model by its slashed id (openai SDK models.retrieve)', async () => {
    const m = await client.models.retrieve('alibaba/z-image-turbo-lora');
    assert.equal(m.id, 'alibaba/z-image-turbo-lora');
    assert.equal(m.owned_by, 'alibaba');
  });

  it('unknown model → NotFoundError; no key → 401', async () => {
    await assert.rejects(client.models.retrieve('dall-e-3'), OpenAI.NotFoundError);
    const res = await request(t.url).get('/v1/models');
    assert.equal(res.status, 401);
  });
});
