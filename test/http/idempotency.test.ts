import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, OTHER_KEY, type TestService } from '../helpers/service.js';

const body = { model: 'alibaba/z-image-turbo', prompt: 'idempotent lighthouse', image_size: 'square', seed: 3 };

describe('Idempotency-Key', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { latencyMs: 300 });
  });
  after(async () => {
    await t.close();
  });

  const post = (key: string, idem: string, b: unknown) =>
    request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${key}`).set('Idempotency-Key', idem).send(b as object);

  it('a repeat with an equal body returns the stored response, with no new job and no new charge', async () => {
    const first = await post(TEST_KEY, 'idem-1', body);
    assert.equal(first.status, 200);
    const jobsBefore = t.emulator.jobs().length;
    // Same JSON, different key order: equal after parsing.
    const reordered = { seed: 3, image_size: 'square', prompt: body.prompt, model: body.model };
    const second = await post(TEST_KEY, 'idem-1', reordered);
    assert.equal(second.status, 200);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(second.body, first.body);
    assert.equal(t.emulator.jobs().length, jobsBefore);
    const img = await fetch(second.body.data[0].url);
    assert.equal(img.status, 200, 'the stored URL is still valid');
    const row = await t.service.ledger.getRequest(first.headers['x-request-id'] as string);
    assert.equal(row?.status, 'settled');
    const settled = await t.service.database.db.selectFrom('requests').select('id').where('idempotency_key', '=', 'idem-1').execute();
    assert.equal(settled.length, 1, 'one charge');
  });

  it('a different body under the same key is a 422', async () => {
    const res = await post(TEST_KEY, 'idem-1', { ...body, seed: 4 });
    assert.equal(res.status, 422);
    assert.equal(res.body.error.code, 'idempotency_key_reused');
    assert.equal(res.body.error.param, 'Idempotency-Key');
  });

  it('a repeat while the first is running waits for it and gets the same answer', async () => {
    const jobsBefore = t.emulator.jobs().length;
    const [a, b] = await Promise.all([post(TEST_KEY, 'idem-concurrent', body), post(TEST_KEY, 'idem-concurrent', body)]);
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    assert.deepEqual(a.body, b.body);
    assert.equal(t.emulator.jobs().length, jobsBefore + 1, 'one fal job');
  });

  it('keys are scoped per API key: another key with the same Idempotency-Key does new work', async () => {
    const jobsBefore = t.emulator.jobs().length;
    const res = await post(OTHER_KEY, 'idem-1', body);
    assert.equal(res.status, 200);
    assert.equal(res.headers['idempotent-replayed'], undefined);
    assert.equal(t.emulator.jobs().length, jobsBefore + 1);
  });

  it('validation failures are not stored: a corrected request may reuse the key', async () => {
    const bad = await post(TEST_KEY, 'idem-fix', { ...body, image_size: 'huge' });
    assert.equal(bad.status, 400);
    const good = await post(TEST_KEY, 'idem-fix', body);
    assert.equal(good.status, 200);
    assert.equal(good.headers['idempotent-replayed'], undefined);
  });

  it('errors after submission are stored: the repeat gets the same error and starts no job', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', status: 422, detail: [{ loc: ['body', 'prompt'], msg: 'refused', type: 'value_error' }], prompt_contains: 'doomed' });
    const b = { ...body, prompt: 'doomed idea' };
    const first = await post(TEST_KEY, 'idem-err', b);
    assert.equal(first.status, 400);
    const jobsBefore = t.emulator.jobs().length;
    const second = await post(TEST_KEY, 'idem-err', b);
    assert.equal(second.status, 400);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(second.body, first.body);
    assert.equal(t.emulator.jobs().length, jobsBefore);
  });

  it('rejects a malformed Idempotency-Key', async () => {
    const res = await post(TEST_KEY, 'x'.repeat(300), body);
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'Idempotency-Key');
  });
});
