import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { parseUsd } from '../../src/metering/money.js';
import { createFalClient } from '@fal-ai/client';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { createRedirectFetch } from '../../src/fal/redirect-fetch.js';

/**
 * A submit that fal refuses (503) yet turns into a job anyway. Resending it
 * is right (a 503 usually means "not taken"), but it then makes two jobs, and
 * fal bills both. The fal client alone loses the first one without a trace;
 * the gateway records it as a `duplicate` job so the cost is visible.
 */
describe('a refused submit that still made a job', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  it('with the fal client alone, its own retry makes a second job and the first is never reported', async () => {
    const client = createFalClient({ credentials: 'k', fetch: createRedirectFetch({ baseUrl: t.emulator.url }) });
    t.emulator.armFault({ phase: 'submit', status: 503, commit: true, times: 1, prompt_contains: 'bare client dup' });
    const { request_id } = await client.queue.submit('fal-ai/z-image/turbo', { input: { prompt: 'bare client dup', image_size: 'square' } });
    const jobs = t.emulator.jobs().filter((j) => j.input.prompt === 'bare client dup');
    assert.equal(jobs.length, 2, 'two jobs exist at fal');
    assert.ok(jobs.some((j) => j.request_id !== request_id), 'one of them the caller never heard of');
  });

  it('through the gateway, the extra job is in the ledger as a stray: its cost recorded by reconciliation, the caller pays for one', async () => {
    t.emulator.armFault({ phase: 'submit', status: 503, commit: true, times: 1, prompt_contains: 'gateway dup' });
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'gateway dup', image_size: 'square' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const jobs = t.emulator.jobs().filter((j) => j.input.prompt === 'gateway dup');
    assert.equal(jobs.length, 2);
    const row = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
    assert.equal(row?.status, 'settled');
    assert.deepEqual(row?.jobs.map((j) => `${j.kind}:${j.status}`).sort(), ['job:completed', 'stray:submitted']);
    assert.deepEqual(new Set(row?.jobs.map((j) => j.falRequestId)), new Set(jobs.map((j) => j.request_id)));
    assert.equal(res.body.meta.usage.cost_usd, '0.005000', 'one image billed to the caller');
    const warned = t.logs.find((l) => l.msg === 'fal named a job on a refused submit attempt; recorded as a stray');
    assert.ok(warned);

    // Once fal finished the stray, reconciliation records what it cost; the caller's charge is unchanged.
    for (let i = 0; i < 1500 && t.emulator.jobs().some((j) => j.input.prompt === 'gateway dup' && j.status !== 'COMPLETED'); i++) await new Promise((r) => setTimeout(r, 20));
    await t.service.reconciler.run({ olderThanMs: 0 });
    const after = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
    const billed = t.emulator.billing().filter((b) => jobs.some((j) => j.request_id === b.request_id));
    assert.equal(billed.length, 2, 'fal billed both jobs');
    assert.deepEqual(after?.jobs.map((j) => `${j.kind}:${j.status}`).sort(), ['job:completed', 'stray:completed']);
    assert.equal(after?.upstreamCostMicros, billed.reduce((sum, b) => sum + parseUsd(b.usd), 0n), 'both jobs are upstream cost');
    assert.equal(after?.chargeMicros, row?.chargeMicros, 'the caller still pays for one');
  });
});
