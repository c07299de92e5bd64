import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, ADMIN_KEY, TEST_KEY, type TestService } from '../helpers/service.js';
import { formatUsd, parseUsd } from '../../src/metering/money.js';

/**
 * Two tenants on one service, each with its own issued key and budget. One
 * must never read, export, replay or spend against the other's usage or
 * budget, and no tenant key passes the admin check.
 */

const bearer = (key: string) => ({ Authorization: `Bearer ${key}` });
// square = 512x512 = one billed megapixel of turbo: $0.005.
const body = { model: 'alibaba/z-image-turbo', prompt: 'tenant isolation', image_size: 'square', seed: 9 };
const ONE_IMAGE = '0.005';

interface Tenant {
  id: string;
  key: string;
}

describe('tenant isolation', () => {
  let t: TestService;
  let a: Tenant;
  let b: Tenant;
  const results = new Map<string, { requestIds: string[]; falIds: string[]; micros: bigint }>();
  /** x-request-id labels a tenant sent: its own data, in its own export, whatever string it chose. */
  const labelsSent = new Map<string, string[]>();

  const generate = (key: string, extra: Record<string, string> = {}, b2: object = body) =>
    request(t.url).post('/v1/images/generations').set(bearer(key)).set(extra).send(b2);
  const record = (tenant: Tenant, res: request.Response) => {
    const r = results.get(tenant.id) ?? { requestIds: [], falIds: [], micros: 0n };
    r.requestIds.push(res.body.meta.request_id as string);
    r.falIds.push(res.body.meta.fal_request_id as string);
    r.micros += parseUsd(res.body.meta.usage.cost_usd as string);
    results.set(tenant.id, r);
  };

  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
    const create = async (name: string, budget: string): Promise<Tenant> => {
      const res = await request(t.url).post('/v1/admin/keys').set(bearer(ADMIN_KEY)).send({ name, budget_usd: budget });
      assert.equal(res.status, 201, res.text);
      return { id: res.body.id as string, key: res.body.key as string };
    };
    a = await create('tenant a', '1.00');
    // Room for exactly two images.
    b = await create('tenant b', '0.01');
  });
  after(async () => {
    await t.close();
  });

  it('Idempotency-Key is scoped per key: the same key and body from another tenant does new work, charged to that tenant', async () => {
    const first = await generate(a.key, { 'Idempotency-Key': 'shared-key-1' });
    assert.equal(first.status, 200);
    record(a, first);
    const jobs = t.emulator.jobs().length;

    const other = await generate(b.key, { 'Idempotency-Key': 'shared-key-1' });
    assert.equal(other.status, 200);
    assert.equal(other.headers['idempotent-replayed'], undefined, "B never receives A's stored response");
    assert.notEqual(other.body.meta.fal_request_id, first.body.meta.fal_request_id);
    assert.equal(t.emulator.jobs().length, jobs + 1, 'a new fal job');
    record(b, other);

    // A different body under the same Idempotency-Key from B is B's own business: no 422 about A's body.
    const differentBody = await generate(b.key, { 'Idempotency-Key': 'shared-key-2' }, { ...body, seed: 10 });
    assert.equal(differentBody.status, 200);
    record(b, differentBody);
    const aSame = await generate(a.key, { 'Idempotency-Key': 'shared-key-2' });
    assert.equal(aSame.status, 200);
    assert.equal(aSame.headers['idempotent-replayed'], undefined);
    record(a, aSame);

    // A's replay returns A's response and charges nothing more.
    const replay = await generate(a.key, { 'Idempotency-Key': 'shared-key-1' });
    assert.equal(replay.status, 200);
    assert.equal(replay.headers['idempotent-replayed'], 'true');
    assert.equal(replay.body.meta.fal_request_id, first.body.meta.fal_request_id);
  });

  it("another tenant's request id is no oracle and no block: A sending B's id gets a request of its own, B's row untouched", async () => {
    const bRequest = results.get(b.id)!.requestIds[0]!;
    const before = await t.service.ledger.getRequest(bRequest);
    assert.equal(before?.keyId, b.id);
    const res = await generate(a.key, { 'x-request-id': bRequest });
    assert.equal(res.status, 200, res.text);
    labelsSent.set(a.id, [bRequest]);
    assert.equal(res.headers['x-request-id'], bRequest, 'echoed as A sent it');
    record(a, res);
    const mine = await t.service.ledger.getRequestByClientId(a.id, bRequest);
    assert.equal(mine?.keyId, a.id);
    assert.equal(mine?.id, res.body.meta.request_id, 'the ledger id is ours, in meta');
    assert.notEqual(mine?.id, bRequest);
    assert.deepEqual(await t.service.ledger.getRequest(bRequest), before, "B's row is untouched");
    const again = await generate(a.key, { 'x-request-id': bRequest });
    assert.equal(again.status, 409, 'A reusing its own label is refused as before');
    assert.equal(again.body.error.code, 'request_id_reused');
  });

  it("spending: B's exhausted budget refuses B only; A's spend never lands on B's budget", async () => {
    // B has spent both images of its budget; one more is refused before fal is called.
    const jobs = t.emulator.jobs().length;
    const refused = await generate(b.key);
    assert.equal(refused.status, 429);
    assert.equal(refused.body.error.code, 'insufficient_quota');
    assert.equal(t.emulator.jobs().length, jobs);

    const ok = await generate(a.key);
    assert.equal(ok.status, 200, "A is not limited by B's budget");
    record(a, ok);

    const keyView = async (id: string) => (await request(t.url).get(`/v1/admin/keys/${id}`).set(bearer(ADMIN_KEY))).body as { spent_usd: string; budget_usd: string };
    const bView = await keyView(b.id);
    assert.equal(bView.spent_usd, formatUsd(results.get(b.id)!.micros));
    assert.equal(bView.budget_usd, formatUsd(parseUsd('0.01')));
    assert.equal((await keyView(a.id)).spent_usd, formatUsd(results.get(a.id)!.micros));
    assert.equal(formatUsd(results.get(b.id)!.micros), formatUsd(parseUsd(ONE_IMAGE) * 2n));
  });

  it("reading: /v1/usage answers the caller's own totals and refuses another key_id", async () => {
    for (const [me, them] of [[a, b], [b, a]] as const) {
      const own = await request(t.url).get('/v1/usage').set(bearer(me.key));
      assert.equal(own.status, 200);
      assert.equal(own.body.totals.cost_usd, formatUsd(results.get(me.id)!.micros));
      assert.equal(own.body.totals.requests, results.get(me.id)!.requestIds.length);
      const byKey = await request(t.url).get('/v1/usage').query({ group_by: 'key' }).set(bearer(me.key));
      assert.deepEqual((byKey.body.data as Array<{ group: string }>).map((r) => r.group), [me.id]);

      for (const format of ['json', 'csv', 'jsonl']) {
        const probe = await request(t.url).get('/v1/usage').query({ key_id: them.id, format }).set(bearer(me.key));
        assert.equal(probe.status, 403, `${format}: ${probe.text}`);
        assert.equal(probe.body.error.type, 'permission_error');
      }
      // The admin view of usage is not a way around it.
      const adminView = await request(t.url).get('/v1/admin/usage').query({ key_id: them.id }).set(bearer(me.key));
      assert.equal(adminView.status, 403);
    }
  });

  it("exporting: CSV and JSONL hold only the caller's rows", async () => {
    for (const [me, them] of [[a, b], [b, a]] as const) {
      for (const format of ['csv', 'jsonl']) {
        const res = await request(t.url).get('/v1/usage').query({ format }).set(bearer(me.key));
        assert.equal(res.status, 200);
        const text = res.text;
        for (const id of results.get(me.id)!.requestIds) assert.ok(text.includes(id), `${format}: own row ${id}`);
        const chosen = new Set(labelsSent.get(me.id) ?? []);
        for (const id of [...results.get(them.id)!.requestIds, ...results.get(them.id)!.falIds, them.id].filter((x) => !chosen.has(x))) {
          assert.ok(!text.includes(id), `${format}: no trace of the other tenant (${id})`);
        }
        assert.ok(!/upstream|margin/.test(text.split(/\r?\n/, 1)[0] ?? ''), 'no operator columns');
      }
    }
  });

  it('every admin route answers 403 to every non-admin key (static, issued), 401 without one', async () => {
    const routes: Array<['get' | 'post' | 'patch' | 'delete' | 'put', string, object?]> = [
      ['post', '/v1/admin/keys', { name: 'escalate', role: 'admin' }],
      ['get', '/v1/admin/keys'],
      ['get', `/v1/admin/keys/${b.id}`],
      ['patch', `/v1/admin/keys/${b.id}`, { budget_usd: null }],
      // Raising one's own budget is an admin act too.
      ['patch', `/v1/admin/keys/${a.id}`, { budget_usd: '1000' }],
      ['delete', `/v1/admin/keys/${b.id}`],
      ['get', '/v1/admin/usage'],
      ['get', '/v1/admin/usage?format=csv'],
      ['get', '/v1/admin/usage?format=jsonl'],
      ['get', '/v1/admin/does-not-exist'],
      ['put', '/v1/admin/keys'],
    ];
    for (const [method, path, payload] of routes) {
      for (const key of [a.key, b.key, TEST_KEY]) {
        const req = request(t.url)[method](path).set(bearer(key));
        const res = await (payload ? req.send(payload) : req);
        assert.equal(res.status, 403, `${method} ${path}: ${res.text}`);
        assert.equal(res.body.error.type, 'permission_error');
      }
      const anon = await (payload ? request(t.url)[method](path).send(payload) : request(t.url)[method](path));
      assert.equal(anon.status, 401, `${method} ${path} without a key`);
    }
    const keys = await t.service.keys.list();
    assert.ok(!keys.some((k) => k.name === 'escalate'), 'nothing was created');
    assert.equal(keys.find((k) => k.id === a.id)?.budgetMicros, parseUsd('1.00'), "A's budget is unchanged");
    assert.equal(keys.find((k) => k.id === b.id)?.enabled, true, 'B is still enabled');
  });
});
