import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, type TestService } from '../helpers/service.js';
import { parseUsd } from '../../src/metering/money.js';

describe('budgets', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { latencyMs: 200 });
  });
  after(async () => {
    await t.close();
  });

  it('overlapping requests never take a key past its budget', async () => {
    // Each request may cost up to 1 MP × $0.005 = $0.005; the budget fits two, not three.
    const { key, record } = await t.service.keys.create({ name: 'small', budgetMicros: 12_000n });
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        request(t.url)
          .post('/v1/images/generations')
          .set('Authorization', `Bearer ${key}`)
          .send({ model: 'alibaba/z-image-turbo', prompt: `budget ${i}`, image_size: 'square' }),
      ),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 429);
    assert.equal(ok.length + refused.length, 8, results.map((r) => r.status).join(','));
    for (const r of refused) {
      assert.equal(r.body.error.type, 'insufficient_quota');
      assert.equal(r.body.error.code, 'insufficient_quota');
      assert.equal(r.headers['x-should-retry'], 'false');
      assert.match(r.body.error.message, /may cost up to \$0\.005000, .*\(\$0\.012000 total, \$[0-9.]+ spent, \$[0-9.]+ set aside for requests in flight/);
    }
    assert.equal(ok.length, 2, 'exactly as many as the budget fits');
    const charged = ok.reduce((s, r) => s + parseUsd(r.body.meta.usage.cost_usd as string), 0n);
    assert.ok(charged <= 12_000n, `charged ${charged}`);
    assert.ok(charged > 12_000n - 5_000n, `charged ${charged}`);
    const after = await t.service.keys.get(record.id);
    assert.equal(after?.spentMicros, charged);
    assert.equal(after?.reservedMicros, 0n);
    // No refused request reached fal.
    assert.equal(t.emulator.jobs().filter((j) => String(j.input.prompt).startsWith('budget')).length, ok.length);
  });
});
