import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import OpenAI from 'openai';
import { ADMIN_KEY, startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

describe('metering unavailable', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  it('answers 503 and sends nothing to fal when the ledger cannot be written', async () => {
    // A first request makes the key known, so the failure below is the ledger's.
    const ok = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: 'alibaba/z-image-turbo', prompt: 'metered' });
    assert.equal(ok.status, 200);
    const jobsBefore = t.emulator.jobs().length;
    await t.service.database.close();
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'unmetered' });
    assert.equal(res.status, 503);
    assert.equal(res.body.error.code, 'metering_unavailable');
    assert.ok(res.headers['retry-after']);
    assert.equal(t.emulator.jobs().length, jobsBefore, 'fal was never called');
    const other = await request(t.url).post('/v1/images/generations').set('Authorization', 'Bearer sk-unknown-key-0000000000').send({});
    assert.equal(other.status, 503, 'key lookups fail closed too');
    const ready = await request(t.url).get('/readyz');
    assert.equal(ready.status, 503);
    assert.equal(ready.body.checks.storage, false);
  });
});

describe('usage and key routes with the store down', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  it('answer a retryable 503 storage_unavailable, not a 500', async () => {
    // Known keys first, so authentication is answered from its cache and the failure below is the route's.
    assert.equal((await request(t.url).get('/v1/usage').set('Authorization', `Bearer ${TEST_KEY}`)).status, 200);
    assert.equal((await request(t.url).get('/v1/admin/keys').set('Authorization', `Bearer ${ADMIN_KEY}`)).status, 200);
    await t.service.database.close();
    const calls = [
      request(t.url).get('/v1/usage').set('Authorization', `Bearer ${TEST_KEY}`),
      request(t.url).get('/v1/usage?format=csv').set('Authorization', `Bearer ${TEST_KEY}`),
      request(t.url).get('/v1/admin/usage?format=jsonl').set('Authorization', `Bearer ${ADMIN_KEY}`),
      request(t.url).get('/v1/admin/keys').set('Authorization', `Bearer ${ADMIN_KEY}`),
      request(t.url).post('/v1/admin/keys').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name: 'new' }),
    ];
    for (const res of await Promise.all(calls)) {
      assert.equal(res.status, 503, res.text);
      assert.equal(res.body.error.code, 'storage_unavailable');
      assert.equal(res.headers['retry-after'], '5');
    }
    // Bad input is still the caller's 400, named, whatever the store's state.
    const bad = await request(t.url).get('/v1/usage?from=yesterday').set('Authorization', `Bearer ${TEST_KEY}`);
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.param, 'from');
  });
});


describe('the database lost after fal made the job', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { latencyMs: 1500 });
  });
  after(async () => {
    await t.close();
  });

  it('answers 503 with x-should-retry: false, so one openai SDK call (retries on) makes one fal job, never two', async () => {
    // The SDK's own retries are on: it retries a 503 unless the answer says not to.
    const client = new OpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1`, maxRetries: 3 });
    const warm = await client.images.generate({ model: 'alibaba/z-image-turbo', prompt: 'warm up the key' });
    assert.equal(warm.data?.length, 1);
    const call = client.images.generate({ model: 'alibaba/z-image-turbo', prompt: 'lost ledger' }).then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    const mine = () => t.emulator.jobs().filter((j) => j.input.prompt === 'lost ledger');
    for (let i = 0; i < 1500 && mine().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(mine().length, 1, 'fal has the job');
    assert.equal(mine()[0]!.status === 'COMPLETED', false, 'the job is still running when the database goes');
    await t.service.database.close();
    const err = await call;
    assert.ok(err instanceof OpenAI.APIError, String(err));
    assert.equal(err.status, 503);
    assert.equal((err.error as { code?: string } | undefined)?.code, 'metering_unavailable');
    assert.equal(new Headers(err.headers as ConstructorParameters<typeof Headers>[0]).get('x-should-retry'), 'false');
    assert.equal(mine().length, 1, 'no second fal job: the SDK did not retry');
  });
});
