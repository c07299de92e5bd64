import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';

const auth = { Authorization: `Bearer ${TEST_KEY}` };

function assertErrorShape(body: unknown): { message: string; type: string; param: string | null; code: string } {
  const e = (body as { error?: Record<string, unknown> }).error;
  assert.ok(e, `error envelope: ${JSON.stringify(body)}`);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.equal(typeof e.type, 'string');
  assert.equal(typeof e.code, 'string');
  assert.ok(e.param === null || typeof e.param === 'string');
  return e as { message: string; type: string; param: string | null; code: string };
}

describe('errors: one shape on every failure', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ MAX_BODY_BYTES: '4096' });
  });
  after(async () => {
    await t.close();
  });

  const cases: Array<{ name: string; send: () => request.Test; status: number; code: string; param?: string | null; type?: string }> = [
    { name: 'no key', send: () => request(t.url).post('/v1/images/generations').send({}), status: 401, code: 'invalid_api_key', type: 'authentication_error' },
    { name: 'wrong key', send: () => request(t.url).post('/v1/images/generations').set('Authorization', 'Bearer sk-nope-nope-nope-nope').send({}), status: 401, code: 'invalid_api_key' },
    { name: 'not bearer', send: () => request(t.url).post('/v1/images/generations').set('Authorization', `Basic ${TEST_KEY}`).send({}), status: 401, code: 'invalid_api_key' },
    {
      name: 'wrong content type',
      send: () => request(t.url).post('/v1/images/generations').set(auth).set('Content-Type', 'text/plain').send('model=x'),
      status: 415,
      code: 'unsupported_media_type',
    },
    {
      name: 'invalid JSON',
      send: () => request(t.url).post('/v1/images/generations').set(auth).set('Content-Type', 'application/json').send('{"model": "alibaba/z-image-turbo",'),
      status: 400,
      code: 'invalid_json',
    },
    {
      name: 'body too large',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'x'.repeat(5000) }),
      status: 413,
      code: 'request_too_large',
    },
    {
      name: 'unknown model wins over every other problem',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'dall-e-3', prompt: 5, n: 99, bogus: true }),
      status: 404,
      code: 'model_not_found',
      param: 'model',
    },
    {
      name: 'missing model',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ prompt: 'x' }),
      status: 404,
      code: 'model_not_found',
      param: 'model',
    },
    {
      name: 'unknown route',
      send: () => request(t.url).get('/v1/nothing-here').set(auth),
      status: 404,
      code: 'unknown_route',
    },
    {
      // The image route is mounted for POST only; anything else on its path falls through to the 404.
      name: 'GET on the image route',
      send: () => request(t.url).get('/v1/images/generations').set(auth),
      status: 404,
      code: 'unknown_route',
    },
    {
      name: 'loras on the non-LoRA model',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'x', loras: [{ path: 'a/b' }] }),
      status: 400,
      code: 'invalid_value',
      param: 'loras',
    },
    {
      name: 'size not a multiple of 32',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'x', image_size: { width: 1000, height: 1024 } }),
      status: 400,
      code: 'invalid_value',
      param: 'image_size',
    },
    {
      name: 'n beyond the model limit',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'x', n: 11 }),
      status: 400,
      code: 'invalid_value',
      param: 'n',
    },
    {
      name: 'provider alibaba',
      send: () => request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-turbo', prompt: 'x', provider: 'Alibaba' }),
      status: 400,
      code: 'invalid_value',
      param: 'provider',
    },
  ];

  for (const c of cases) {
    it(`${c.name} → ${c.status} ${c.code}`, async () => {
      const res = await c.send();
      assert.equal(res.status, c.status, JSON.stringify(res.body));
      assert.match(res.headers['content-type'] as string, /application\/json/);
      assert.match(res.headers['x-request-id'] as string, /^req_/);
      const e = assertErrorShape(res.body);
      assertMatchesSchema('error', res.body);
      assert.equal(e.code, c.code);
      if (c.param !== undefined) assert.equal(e.param, c.param);
      if (c.type) assert.equal(e.type, c.type);
      // No validation failure may have reached fal.
      assert.ok(!JSON.stringify(res.body).includes(TEST_KEY));
    });
  }

  it('sent nothing to fal for any rejected request', () => {
    assert.equal(t.emulator.billing().length, 0);
  });
});
