import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

describe('MAX_IN_FLIGHT and /metrics', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ MAX_IN_FLIGHT: '2', DEFAULT_RPM_LIMIT: '0' }, { latencyMs: 600 });
  });
  after(async () => {
    await t.close();
  });

  it('past the cap answers 429 at once (nothing queued, nothing sent to fal), then recovers', async () => {
    const send = (i: number) =>
      request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: 'alibaba/z-image-turbo', prompt: `cap ${i}`, image_size: 'square' });
    const first = [send(1), send(2)].map((p) => p.then((r) => r));
    await new Promise((r) => setTimeout(r, 150));
    const started = Date.now();
    const over = await send(3);
    assert.equal(over.status, 429);
    assert.equal(over.body.error.code, 'rate_limit_exceeded');
    assert.equal(over.headers['retry-after'], '1');
    assert.ok(Date.now() - started < 500, 'refused at once');
    assert.deepEqual((await Promise.all(first)).map((r) => r.status), [200, 200]);
    assert.equal(t.emulator.jobs().filter((j) => String(j.input.prompt) === 'cap 3').length, 0);
    assert.equal((await send(4)).status, 200, 'capacity is returned when requests finish');
  });

  it('exposes every operational metric', async () => {
    const text = await (await fetch(`${t.url}/metrics`)).text();
    for (const name of [
      'gateway_http_requests_total{route="/v1/images/generations",model="alibaba/z-image-turbo",status="200"} 3',
      'gateway_http_request_duration_seconds_bucket',
      'gateway_fal_job_duration_seconds_bucket',
      'gateway_fal_call_duration_seconds_bucket{le="0.001",phase="submit"}',
      'gateway_jobs_in_flight 0',
      'gateway_fal_status_requests_total',
      'gateway_images_delivered_total{model="alibaba/z-image-turbo"} 3',
      'gateway_caller_charge_usd_total{model="alibaba/z-image-turbo"} 0.015',
      'gateway_upstream_cost_usd_total{model="alibaba/z-image-turbo"} 0.015',
      'gateway_refusals_total{reason="in_flight"} 1',
      'gateway_units_disagreements_total',
      'gateway_rate_limit_fail_open_total',
    ]) {
      assert.ok(text.includes(name), `missing: ${name}`);
    }
  });
});
