import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEmulator, type Emulator } from '../src/emulator/index.js';
import { startTestService, ADMIN_KEY, type TestService } from './helpers/service.js';
import { createStorage, postgresAvailability, serviceEnv, type TestStorage } from './helpers/databases.js';
import { parseUsd } from '../src/metering/money.js';

/**
 * Two service instances sharing one PostgreSQL schema and one emulator, with
 * nothing shared in memory (separate pools, caches and waiters): budgets,
 * idempotency and key revocation must hold across them, as they would across
 * replicas behind a load balancer.
 */
const pg = await postgresAvailability();
const skip = pg.ok ? false : process.env.CI ? false : `PostgreSQL not reachable: ${(pg as { reason: string }).reason}`;

describe('two replicas sharing PostgreSQL', { skip }, () => {
  let emulator: Emulator;
  let storage: TestStorage;
  let a: TestService;
  let b: TestService;
  before(async () => {
    if (!pg.ok) throw new Error(`CI must run this: ${(pg as { reason: string }).reason}`);
    emulator = await startEmulator({ port: 0, latencyMs: 300 });
    storage = await createStorage('postgres');
    const env = { ...(await serviceEnv(storage)), DEFAULT_RPM_LIMIT: '0' };
    a = await startTestService(env, { use: emulator });
    b = await startTestService(env, { use: emulator });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await storage?.destroy();
    await emulator?.close();
  });

  const post = (t: TestService, key: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'alibaba/z-image-turbo', image_size: 'square', ...body }),
    });

  it('a budget holds across replicas: overlapping requests never spend past it', async () => {
    const { key } = await a.service.keys.create({ name: 'shared budget', budgetMicros: 12_000n });
    const res = await Promise.all(Array.from({ length: 8 }, (_, i) => post(i % 2 ? a : b, key, { prompt: `replica budget ${i}` })));
    const ok = res.filter((r) => r.status === 200);
    assert.equal(ok.length, 2, res.map((r) => r.status).join(','));
    assert.ok(res.every((r) => r.status === 200 || r.status === 429));
    const spent = (await Promise.all(ok.map(async (r) => ((await r.json()) as { meta: { usage: { cost_usd: string } } }).meta.usage.cost_usd))).reduce((s, c) => s + parseUsd(c), 0n);
    assert.ok(spent <= 12_000n);
  });

  it('an Idempotency-Key sent to both replicas at once makes one fal job and one answer', async () => {
    const { key } = await a.service.keys.create({ name: 'idem' });
    const before = emulator.jobs().length;
    const [r1, r2] = await Promise.all([
      post(a, key, { prompt: 'replica idem', seed: 9 }, { 'idempotency-key': 'shared-1' }),
      post(b, key, { prompt: 'replica idem', seed: 9 }, { 'idempotency-key': 'shared-1' }),
    ]);
    assert.deepEqual([r1.status, r2.status], [200, 200]);
    assert.deepEqual(await r1.json(), await r2.json());
    assert.equal(emulator.jobs().length, before + 1);
  });

  it('a key disabled on one replica is refused by the other within 5 s', async () => {
    const { key, record } = await a.service.keys.create({ name: 'to revoke' });
    assert.equal((await post(b, key, { prompt: 'before revoke' })).status, 200);
    const del = await fetch(`${a.url}/v1/admin/keys/${record.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    assert.equal(del.status, 200);
    const started = Date.now();
    let status = 200;
    while (Date.now() - started < 5000) {
      status = (await post(b, key, { prompt: 'after revoke' })).status;
      if (status === 401) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(status, 401, 'refused by the other replica');
  });
});
