import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

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
