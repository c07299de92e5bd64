import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * The emulator prices from its own table, so it can disagree with our model
 * registry. When fal bills another quantity than we estimated, the ledger
 * keeps both, counts the disagreement and exposes it as a metric; nothing is
 * hidden or silently "corrected".
 */
describe('fal’s bill disagrees with our estimate', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  it('records fal’s units beside ours, counts the disagreement in the ledger and in /metrics', async () => {
    // fal bills exact fractional megapixels (10^6 pixels) where we round each image up to 2^20.
    t.emulator.setPrices(
      { endpoints: { 'fal-ai/z-image/turbo': { unit: 'megapixel', usd_per_unit: '0.005', megapixel_pixels: 1_000_000, rounding: 'none' } } },
      { merge: true },
    );
    const res = await request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'disagreeable', image_size: 'landscape_4_3' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const falId = res.body.meta.fal_request_id as string;
    const billed = t.emulator.billing().find((b) => b.request_id === falId)!;
    assert.equal(billed.units, '0.786432');

    const row = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
    const job = row!.jobs[0]!;
    assert.equal(job.unitsEstimate, '1');
    assert.equal(Number(job.unitsFal), 0.786432);
    // Upstream cost follows fal's own quantity: 0.786432 MP × $0.005, rounded up to the micro-dollar.
    assert.equal(job.upstreamCostMicros, 3933n);
    assert.equal(billed.usd, '0.00393216', 'fal bills a fraction of a micro-dollar, which we round up to 0.003933');
    // The caller is still charged by our published rule.
    assert.equal(res.body.meta.usage.cost_usd, '0.005000');

    const d = await t.service.reports.unitsDisagreements();
    assert.equal(d.count, 1);
    assert.equal(d.jobs[0]?.falRequestId, falId);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    assert.match(metrics, /gateway_units_disagreements_total\{model="alibaba\/z-image-turbo"\} 1/);
    const warned = t.logs.find((l) => l.msg === 'fal billed a different quantity than our estimate');
    assert.equal(warned?.fal_request_id, falId);
  });
});
