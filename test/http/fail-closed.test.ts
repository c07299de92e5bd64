import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
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

