import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import request from 'supertest';
import { startTestService, ADMIN_KEY, OTHER_KEY, TEST_KEY, type TestService } from '../helpers/service.js';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { formatUsd, parseUsd } from '../../src/metering/money.js';
import { staticKeyId } from '../../src/metering/auth.js';
import { ADMIN_EXPORT_COLUMNS, CALLER_EXPORT_COLUMNS } from '../../src/metering/views.js';

const bearer = (key: string) => ({ Authorization: `Bearer ${key}` });
const admin = bearer(ADMIN_KEY);
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const TEST_ID = staticKeyId(sha256(TEST_KEY));
const OTHER_ID = staticKeyId(sha256(OTHER_KEY));

interface Generated {
  model: string;
  costMicros: bigint;
  credits: number;
  images: number;
  falRequestId: string;
}

describeEachDialect('admin keys and usage over HTTP', (ctx) => {
  let t: TestService;
  before(async () => {
    t = await startTestService(await serviceEnv(await ctx.storage()), { imageMode: 'cheap' });
  });
  after(async () => {
    await t?.close();
  });

  async function generate(key: string, body: Record<string, unknown>): Promise<Generated> {
    const res = await request(t.url).post('/v1/images/generations').set(bearer(key)).send({ prompt: 'usage test', ...body });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return {
      model: String(body.model),
      costMicros: parseUsd(res.body.meta.usage.cost_usd as string),
      credits: res.body.meta.usage.credits_used as number,
      images: (res.body.data as unknown[]).length,
      falRequestId: res.body.meta.fal_request_id as string,
    };
  }

  const sum = (gs: Generated[]) => ({
    requests: gs.length,
    images: gs.reduce((s, g) => s + g.images, 0),
    cost_usd: formatUsd(gs.reduce((s, g) => s + g.costMicros, 0n)),
    credits: gs.reduce((s, g) => s + g.credits, 0),
  });

  describe('keys', () => {
    it('creates a key that is shown once and works for image generation', async () => {
      const res = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'tenant a', budget_usd: '10', rpm_limit: 120 });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.headers['cache-control'], 'no-store');
      const { key, ...record } = res.body as Record<string, unknown>;
      assert.match(String(key), /^sk-[A-Za-z0-9_-]{40,}$/);
      assert.deepEqual(
        { ...record, id: undefined, created_at: undefined, updated_at: undefined },
        {
          id: undefined,
          kind: 'issued',
          name: 'tenant a',
          role: 'user',
          enabled: true,
          budget_usd: '10.000000',
          spent_usd: '0.000000',
          reserved_usd: '0.000000',
          rpm_limit: 120,
          created_at: undefined,
          updated_at: undefined,
        },
      );

      const g = await generate(String(key), { model: 'alibaba/z-image-turbo', image_size: 'square' });
      const got = await request(t.url).get(`/v1/admin/keys/${String(record.id)}`).set(admin);
      assert.equal(got.status, 200);
      assert.equal(got.body.spent_usd, formatUsd(g.costMicros), 'the charge landed on the new key');
      assert.equal(got.body.reserved_usd, '0.000000');

      // Never again: neither the key nor its hash on any read.
      const list = await request(t.url).get('/v1/admin/keys').set(admin);
      assert.equal(list.status, 200);
      assert.equal(list.body.object, 'list');
      assert.ok((list.body.data as Array<{ id: string }>).some((k) => k.id === record.id));
      for (const text of [list.text, got.text]) {
        assert.ok(!text.includes(String(key)), 'the key is never shown again');
        assert.ok(!text.includes(sha256(String(key))), 'nor its hash');
        assert.doesNotMatch(text, /"key"|key_hash/);
      }
    });

    it('creates admin keys that may use the admin routes', async () => {
      const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'ops', role: 'admin' });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      assert.equal(created.body.role, 'admin');
      assert.equal(created.body.budget_usd, null);
      assert.equal(created.body.rpm_limit, null);
      const list = await request(t.url).get('/v1/admin/keys').set(bearer(created.body.key as string));
      assert.equal(list.status, 200);
    });

    it('stores budgets exactly, and null removes them', async () => {
      const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'budgeted', budget_usd: 0.1 });
      assert.equal(created.body.budget_usd, '0.100000');
      const id = created.body.id as string;
      const cases: Array<[unknown, string | null]> = [
        ['0.000001', '0.000001'],
        [12.345678, '12.345678'],
        ['12.3456780', '12.345678'],
        [0, '0.000000'],
        ['123456789.5', '123456789.500000'],
        [null, null],
      ];
      for (const [budget, shown] of cases) {
        const res = await request(t.url).patch(`/v1/admin/keys/${id}`).set(admin).send({ budget_usd: budget });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.equal(res.body.budget_usd, shown, `budget_usd ${JSON.stringify(budget)}`);
        const stored = await t.service.keys.get(id);
        assert.equal(stored?.budgetMicros, shown === null ? null : parseUsd(shown));
      }
      const renamed = await request(t.url).patch(`/v1/admin/keys/${id}`).set(admin).send({ name: 'renamed', rpm_limit: 5, role: 'admin' });
      assert.equal(renamed.status, 200);
      assert.deepEqual([renamed.body.name, renamed.body.rpm_limit, renamed.body.role, renamed.body.budget_usd], ['renamed', 5, 'admin', null]);
      const cleared = await request(t.url).patch(`/v1/admin/keys/${id}`).set(admin).send({ rpm_limit: null });
      assert.equal(cleared.body.rpm_limit, null);
      assert.equal(cleared.body.name, 'renamed', 'fields not sent are kept');
    });

    it('refuses inexact, negative and malformed budgets, naming budget_usd', async () => {
      const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'victim' });
      const id = created.body.id as string;
      const bad: unknown[] = ['1.0000001', 0.0000001, '-1', -0.5, 'NaN', 'abc', '1e3', '', ' 1', '0x10', true, [], {}];
      for (const budget_usd of bad) {
        for (const res of [
          await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'x', budget_usd }),
          await request(t.url).patch(`/v1/admin/keys/${id}`).set(admin).send({ budget_usd }),
        ]) {
          assert.equal(res.status, 400, `${JSON.stringify(budget_usd)}: ${res.text}`);
          assert.equal(res.body.error.type, 'invalid_request_error');
          assert.equal(res.body.error.param, 'budget_usd', `${JSON.stringify(budget_usd)}: ${res.body.error.message}`);
          assert.match(res.body.error.message, /budget_usd/);
        }
      }
      const unchanged = await t.service.keys.get(id);
      assert.equal(unchanged?.budgetMicros, null);
    });

    it('refuses unknown fields and bad values, naming them', async () => {
      const cases: Array<[string, 'post' | 'patch', unknown, string | null]> = [
        ['unknown field', 'post', { name: 'x', owner: 'me' }, 'owner'],
        ['missing name', 'post', { budget_usd: '1' }, 'name'],
        ['empty name', 'post', { name: '' }, 'name'],
        ['bad role', 'post', { name: 'x', role: 'root' }, 'role'],
        ['fractional rpm', 'post', { name: 'x', rpm_limit: 1.5 }, 'rpm_limit'],
        ['not an object', 'post', [1, 2], null],
        ['unknown field (patch)', 'patch', { key: 'sk-mine' }, 'key'],
        ['enabled as string', 'patch', { enabled: 'no' }, 'enabled'],
      ];
      const target = (await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'target' })).body.id as string;
      for (const [what, method, body, param] of cases) {
        const path = method === 'post' ? '/v1/admin/keys' : `/v1/admin/keys/${target}`;
        const res = await request(t.url)[method](path).set(admin).send(body as object);
        assert.equal(res.status, 400, `${what}: ${res.text}`);
        assert.equal(res.body.error.param, param, `${what}: ${res.body.error.message}`);
      }
    });

    it('disabling refuses the key within 5 seconds, and the record is returned', async () => {
      const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'short-lived' });
      const key = created.body.key as string;
      // Warm the authenticator's cache so the test covers its expiry, not a cold lookup.
      assert.equal((await request(t.url).get('/v1/usage').set(bearer(key))).status, 200);
      const del = await request(t.url).delete(`/v1/admin/keys/${created.body.id as string}`).set(admin);
      const disabledAt = Date.now();
      assert.equal(del.status, 200, del.text);
      assert.equal(del.body.enabled, false);
      assert.equal(del.body.id, created.body.id);
      let status = 0;
      while (Date.now() - disabledAt < 5000) {
        status = (await request(t.url).get('/v1/usage').set(bearer(key))).status;
        if (status === 401) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(status, 401, 'refused within 5 s');
      const gen = await request(t.url).post('/v1/images/generations').set(bearer(key)).send({ model: 'alibaba/z-image-turbo', prompt: 'x' });
      assert.equal(gen.status, 401);
      const listed = await request(t.url).get('/v1/admin/keys').set(admin);
      assert.equal((listed.body.data as Array<{ id: string; enabled: boolean }>).find((k) => k.id === created.body.id)?.enabled, false);
    });

    it('answers 403 permission_error to non-admin keys on every admin route, and 401 without a key', async () => {
      const user = (await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'plain user' })).body.key as string;
      const routes: Array<['get' | 'post' | 'patch' | 'delete', string, object?]> = [
        ['post', '/v1/admin/keys', { name: 'sneaky', role: 'admin' }],
        ['get', '/v1/admin/keys'],
        ['get', `/v1/admin/keys/${TEST_ID}`],
        ['patch', `/v1/admin/keys/${TEST_ID}`, { budget_usd: null }],
        ['delete', `/v1/admin/keys/${TEST_ID}`],
        ['get', '/v1/admin/usage'],
        ['get', '/v1/admin/usage?format=csv'],
      ];
      for (const [method, path, body] of routes) {
        for (const key of [TEST_KEY, user]) {
          const req = request(t.url)[method](path).set(bearer(key));
          const res = await (body ? req.send(body) : req);
          assert.equal(res.status, 403, `${method} ${path}: ${res.text}`);
          assert.equal(res.body.error.type, 'permission_error');
        }
        const anon = await (body ? request(t.url)[method](path).send(body) : request(t.url)[method](path));
        assert.equal(anon.status, 401, `${method} ${path} without a key`);
      }
      const keys = await t.service.keys.list();
      assert.ok(!keys.some((k) => k.name === 'sneaky'), 'nothing was created');
    });

    it('answers 404 for an unknown id and 409 for keys configured in the environment', async () => {
      for (const [method, body] of [['get'], ['patch', { name: 'x' }], ['delete']] as const) {
        const req = request(t.url)[method]('/v1/admin/keys/key_doesnotexist').set(admin);
        const res = await (body ? req.send(body) : req);
        assert.equal(res.status, 404, `${method}: ${res.text}`);
        assert.equal(res.body.error.code, 'key_not_found');
        assert.equal(res.body.error.param, 'id');
      }
      // The static rows exist once the key has been used.
      assert.equal((await request(t.url).get('/v1/usage').set(bearer(TEST_KEY))).status, 200);
      const shown = await request(t.url).get(`/v1/admin/keys/${TEST_ID}`).set(admin);
      assert.equal(shown.status, 200);
      assert.equal(shown.body.kind, 'static');
      const del = await request(t.url).delete(`/v1/admin/keys/${TEST_ID}`).set(admin);
      assert.equal(del.status, 409);
      assert.equal(del.body.error.code, 'static_key');
      assert.equal((await request(t.url).get('/v1/usage').set(bearer(TEST_KEY))).status, 200, 'still works');
    });
  });

  describe('usage', () => {
    let start: string;
    const mine: Generated[] = [];
    const theirs: Generated[] = [];
    before(async () => {
      start = new Date().toISOString();
      mine.push(await generate(TEST_KEY, { model: 'alibaba/z-image-turbo' }));
      mine.push(await generate(TEST_KEY, { model: 'alibaba/z-image-turbo', image_size: 'square', n: 2, enable_prompt_expansion: true }));
      mine.push(
        await generate(TEST_KEY, {
          model: 'alibaba/z-image-turbo-lora',
          image_size: { width: 512, height: 512 },
          loras: [{ path: 'https://example.com/style.safetensors', scale: 0.8 }],
        }),
      );
      theirs.push(await generate(OTHER_KEY, { model: 'alibaba/z-image-turbo', enable_prompt_expansion: true }));
      theirs.push(await generate(OTHER_KEY, { model: 'alibaba/z-image-turbo-lora', image_size: 'square_hd' }));
      // The prices differ, so a mix-up between keys or models cannot sum to the same totals.
      assert.notEqual(sum(mine).cost_usd, sum(theirs).cost_usd);
    });

    it("totals equal the sum of the responses' meta.usage, exactly, for the caller's own key", async () => {
      const res = await request(t.url).get('/v1/usage').query({ from: start }).set(bearer(TEST_KEY));
      assert.equal(res.status, 200, res.text);
      assert.equal(res.headers['cache-control'], 'no-store');
      assert.deepEqual(res.body, {
        object: 'usage',
        from: start,
        to: null,
        model: null,
        key_id: TEST_ID,
        group_by: null,
        totals: sum(mine),
        data: [],
      });
      const other = await request(t.url).get('/v1/usage').query({ from: start }).set(bearer(OTHER_KEY));
      assert.deepEqual(other.body.totals, sum(theirs));
      assert.equal(other.body.key_id, OTHER_ID);
      assert.ok(!('upstream_cost_usd' in other.body.totals), 'upstream cost is for admins only');
    });

    it('groups by model, key and UTC day', async () => {
      const byModel = await request(t.url).get('/v1/usage').query({ from: start, group_by: 'model' }).set(bearer(TEST_KEY));
      assert.deepEqual(byModel.body.data, [
        { group: 'alibaba/z-image-turbo', ...sum(mine.filter((g) => g.model === 'alibaba/z-image-turbo')) },
        { group: 'alibaba/z-image-turbo-lora', ...sum(mine.filter((g) => g.model === 'alibaba/z-image-turbo-lora')) },
      ]);
      assert.deepEqual(byModel.body.totals, sum(mine));

      const byKey = await request(t.url).get('/v1/usage').query({ from: start, group_by: 'key' }).set(bearer(TEST_KEY));
      assert.deepEqual(byKey.body.data, [{ group: TEST_ID, ...sum(mine) }], 'only the caller’s own key');

      const byDay = await request(t.url).get('/v1/usage').query({ from: start, group_by: 'day' }).set(bearer(TEST_KEY));
      const days = byDay.body.data as Array<{ group: string; requests: number }>;
      // Normally one day; two when the test runs across UTC midnight.
      assert.ok(days.length >= 1 && days.length <= 2, JSON.stringify(days));
      for (const d of days) assert.match(d.group, /^\d{4}-\d{2}-\d{2}$/);
      assert.equal(days[0]!.group, start.slice(0, 10));
      assert.equal(days.reduce((s, d) => s + d.requests, 0), 3);
      assert.deepEqual(byDay.body.totals, sum(mine));

      const model = await request(t.url).get('/v1/usage').query({ from: start, model: 'alibaba/z-image-turbo-lora' }).set(bearer(OTHER_KEY));
      assert.deepEqual(model.body.totals, sum(theirs.filter((g) => g.model === 'alibaba/z-image-turbo-lora')));
      assert.equal(model.body.model, 'alibaba/z-image-turbo-lora');
    });

    it("never shows another key's usage to a tenant", async () => {
      const probe = await request(t.url).get('/v1/usage').query({ key_id: TEST_ID }).set(bearer(OTHER_KEY));
      assert.equal(probe.status, 403, probe.text);
      assert.equal(probe.body.error.type, 'permission_error');
      const missing = await request(t.url).get('/v1/usage').query({ key_id: 'key_doesnotexist' }).set(bearer(OTHER_KEY));
      assert.equal(missing.status, 403, 'the same answer whether the key exists or not');
      const own = await request(t.url).get('/v1/usage').query({ key_id: OTHER_ID, from: start }).set(bearer(OTHER_KEY));
      assert.equal(own.status, 200);
      assert.deepEqual(own.body.totals, sum(theirs));
      for (const format of ['csv', 'jsonl']) {
        const text = (await request(t.url).get('/v1/usage').query({ format, from: start }).set(bearer(OTHER_KEY))).text;
        for (const g of mine) assert.ok(!text.includes(g.falRequestId), 'no row of the other key');
        assert.ok(!text.includes(TEST_ID));
      }
      const byKey = await request(t.url).get('/v1/usage').query({ group_by: 'key' }).set(bearer(OTHER_KEY));
      assert.deepEqual(
        (byKey.body.data as Array<{ group: string }>).map((r) => r.group),
        [OTHER_ID],
      );
    });

    it('shows admins every key with upstream cost and margin', async () => {
      const fal = new Map(t.emulator.billing().map((b) => [b.request_id, b]));
      const upstream = (gs: Generated[]) => gs.reduce((s, g) => s + parseUsd(fal.get(g.falRequestId)!.usd), 0n);
      const withMargin = (gs: Generated[]) => {
        const u = upstream(gs);
        const c = gs.reduce((s, g) => s + g.costMicros, 0n);
        return { ...sum(gs), upstream_cost_usd: formatUsd(u), margin_usd: formatUsd(c - u) };
      };

      const all = await request(t.url).get('/v1/admin/usage').query({ from: start, group_by: 'key' }).set(admin);
      assert.equal(all.status, 200, all.text);
      assert.equal(all.body.key_id, null);
      assert.deepEqual(all.body.totals, withMargin([...mine, ...theirs]));
      assert.deepEqual(
        all.body.data,
        [
          { group: OTHER_ID, ...withMargin(theirs) },
          { group: TEST_ID, ...withMargin(mine) },
        ].sort((a, b) => (a.group < b.group ? -1 : 1)),
      );
      const one = await request(t.url).get('/v1/admin/usage').query({ from: start, key_id: TEST_ID }).set(admin);
      assert.deepEqual(one.body.totals, withMargin(mine));
      assert.equal(one.body.key_id, TEST_ID);
    });

    it('shows the upstream cost no caller pays (a failed job fal billed) as unrecovered, in the report and in /metrics', async () => {
      const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'unrecovered' });
      const key = created.body.key as string;
      const keyId = created.body.id as string;
      t.emulator.armFault({ kind: 'fail_after_start', status: 422, detail: [{ loc: ['body', 'prompt'], msg: 'refused', type: 'value_error' }], prompt_contains: 'billed refusal' });
      const res = await request(t.url).post('/v1/images/generations').set(bearer(key)).send({ model: 'alibaba/z-image-turbo', prompt: 'billed refusal' });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      const row = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
      const bill = t.emulator.billing().find((b) => b.request_id === row?.jobs[0]?.falRequestId);
      assert.ok(bill && parseUsd(bill.usd) > 0n, 'fal billed the failed job');
      assert.equal(row?.chargeMicros, 0n, 'the caller was answered with an error: not charged');

      const report = await request(t.url).get('/v1/admin/usage').query({ key_id: keyId }).set(admin);
      assert.equal(report.status, 200, JSON.stringify(report.body));
      assert.deepEqual(report.body.unrecovered, {
        upstream_cost_usd: formatUsd(parseUsd(bill.usd)),
        estimated_usd: '0.000000',
        jobs: 1,
        by_model: [{ model: 'alibaba/z-image-turbo', upstream_cost_usd: formatUsd(parseUsd(bill.usd)), estimated_usd: '0.000000', jobs: 1 }],
      });
      assert.equal(report.body.totals.requests, 0, 'totals count settled requests only');

      const metrics = await request(t.url).get('/metrics');
      const line = metrics.text.split('\n').find((l) => l.startsWith('gateway_unrecovered_cost_usd{model="alibaba/z-image-turbo"}'));
      assert.ok(line, metrics.text.slice(0, 500));
      assert.ok(Number(line.split(' ')[1]) >= Number(bill.usd), 'the gauge reads the ledger (all keys)');
    });

    it('applies from (inclusive) and to (exclusive) to settlement time', async () => {
      const rows = (await request(t.url).get('/v1/admin/usage').query({ from: start, format: 'jsonl' }).set(admin)).text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { settled_at: string; request_id: string });
      assert.equal(rows.length, 5);
      const at = rows[2]!.settled_at;
      const next = new Date(Date.parse(at) + 1).toISOString();
      const count = async (q: Record<string, string>) => {
        const res = await request(t.url).get('/v1/admin/usage').query({ from: start, ...q }).set(admin);
        assert.equal(res.status, 200, `${JSON.stringify(q)}: ${res.text}`);
        return (res.body.totals as { requests: number }).requests;
      };
      const sameInstant = rows.filter((r) => r.settled_at === at).length;
      const before = rows.filter((r) => r.settled_at < at).length;
      assert.equal(await count({ from: at, to: next }), sameInstant, 'from is inclusive');
      assert.equal(await count({ to: at }), before, 'to is exclusive');
      assert.equal(await count({ from: next }), rows.length - before - sameInstant);
      // Offsets and date-only forms name the same instants.
      const shifted = new Date(Date.parse(at) + 2 * 3600_000).toISOString().replace('Z', '+02:00');
      assert.equal(await count({ from: shifted, to: next }), sameInstant);
      assert.equal(await count({ from: '1999-12-31', to: '2000-01-01' }), 0);
    });

    it('refuses bad query parameters, naming them', async () => {
      const cases: Array<[Record<string, string>, string]> = [
        [{ from: 'yesterday' }, 'from'],
        [{ to: '2025-02-30' }, 'to'],
        [{ to: '2025-01-01T25:00:00Z' }, 'to'],
        [{ from: '2025-01-02', to: '2025-01-01' }, 'from'],
        [{ group_by: 'week' }, 'group_by'],
        [{ format: 'xml' }, 'format'],
        [{ format: 'csv', group_by: 'day' }, 'group_by'],
        [{ limit: '10' }, 'limit'],
      ];
      for (const [query, param] of cases) {
        const res = await request(t.url).get('/v1/usage').query(query).set(bearer(TEST_KEY));
        assert.equal(res.status, 400, `${JSON.stringify(query)}: ${res.text}`);
        assert.equal(res.body.error.param, param, `${JSON.stringify(query)}: ${res.body.error.message}`);
      }
      const twice = await request(t.url).get('/v1/usage?model=a&model=b').set(bearer(TEST_KEY));
      assert.equal(twice.status, 400);
      assert.equal(twice.body.error.param, 'model');
    });

    it('streams CSV with a header row and the documented columns', async () => {
      const res = await request(t.url).get('/v1/usage').query({ from: start, format: 'csv' }).set(bearer(TEST_KEY));
      assert.equal(res.status, 200, res.text);
      assert.match(String(res.headers['content-type']), /^text\/csv/);
      assert.match(String(res.headers['content-disposition']), /attachment; filename="usage\.csv"/);
      assert.equal(res.headers['transfer-encoding'], 'chunked', 'streamed, not buffered whole');
      const lines = res.text.split('\r\n');
      assert.equal(lines.pop(), '', 'every row ends with CRLF');
      assert.deepEqual(lines[0]!.split(','), [...CALLER_EXPORT_COLUMNS]);
      const rows = lines.slice(1).map((l) => Object.fromEntries(l.split(',').map((v, i) => [CALLER_EXPORT_COLUMNS[i], v])));
      assert.equal(rows.length, mine.length);
      assert.equal(formatUsd(rows.reduce((s, r) => s + parseUsd(r.cost_usd!), 0n)), sum(mine).cost_usd);
      assert.equal(rows.reduce((s, r) => s + BigInt(r.charge_micros!), 0n), parseUsd(sum(mine).cost_usd));
      assert.equal(rows.reduce((s, r) => s + Number(r.credits), 0), sum(mine).credits);
      for (const r of rows) {
        assert.equal(r.key_id, TEST_ID);
        assert.match(r.request_id!, /^req_/);
        assert.ok(r.settled_at! >= start);
      }
    });

    it('streams JSONL, one settled request per line; the admin view adds upstream cost and margin', async () => {
      const res = await request(t.url).get('/v1/admin/usage').query({ from: start, format: 'jsonl' }).set(admin);
      assert.equal(res.status, 200);
      assert.match(String(res.headers['content-type']), /^application\/x-ndjson/);
      const rows = res.text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(rows.length, mine.length + theirs.length);
      for (const r of rows) {
        assert.deepEqual(Object.keys(r), [...ADMIN_EXPORT_COLUMNS]);
        assert.equal(typeof r.charge_micros, 'number');
        assert.equal(formatUsd(BigInt(r.charge_micros as number)), r.cost_usd);
        assert.equal(formatUsd(BigInt(r.charge_micros as number) - BigInt(r.upstream_cost_micros as number)), r.margin_usd);
      }
      const total = rows.reduce((s, r) => s + BigInt(r.charge_micros as number), 0n);
      assert.equal(total, [...mine, ...theirs].reduce((s, g) => s + g.costMicros, 0n));
      const sorted = rows.map((r) => `${String(r.settled_at)} ${String(r.request_id)}`);
      assert.deepEqual(sorted, [...sorted].sort(), 'ordered by settlement time');

      const empty = await request(t.url).get('/v1/usage').query({ to: '2000-01-01', format: 'jsonl' }).set(bearer(TEST_KEY));
      assert.equal(empty.status, 200);
      assert.equal(empty.text, '');
      const header = await request(t.url).get('/v1/usage').query({ to: '2000-01-01', format: 'csv' }).set(bearer(TEST_KEY));
      assert.equal(header.text, `${CALLER_EXPORT_COLUMNS.join(',')}\r\n`);
    });

    it('streams exports larger than one database batch and one write, in order, with no row lost or repeated', async () => {
      // Settled rows written straight into the table: thousands of real
      // generations would only slow the test down. Groups of rows share a
      // settlement instant, so the export's keyset paging must break ties by id.
      const { key, record } = await t.service.keys.create({ name: 'bulk' });
      const n = 1500;
      const quoted = 'user, "quoted"';
      const base = Date.parse('2020-06-01T00:00:00.000Z');
      const rows = Array.from({ length: n }, (_, i) => ({
        id: `req_bulk_${String((i * 7919) % n).padStart(5, '0')}`,
        key_id: record.id,
        model: 'alibaba/z-image-turbo',
        endpoint: 'fal-ai/z-image/turbo',
        end_user: i % 3 === 0 ? quoted : null,
        status: 'settled' as const,
        reserved_micros: 10_000n,
        charge_micros: BigInt(1000 + i),
        credits: BigInt(2 * (1000 + i)),
        upstream_cost_micros: 900n,
        images: 1n,
        created_at: new Date(base + Math.floor(i / 7) * 1000 - 500).toISOString(),
        settled_at: new Date(base + Math.floor(i / 7) * 1000).toISOString(),
      }));
      for (let i = 0; i < n; i += 100) await t.service.database.db.insertInto('requests').values(rows.slice(i, i + 100)).execute();

      const res = await request(t.url).get('/v1/usage').query({ format: 'csv' }).set(bearer(key));
      assert.equal(res.status, 200);
      assert.ok(res.text.length > 64 * 1024, 'more than one chunk');
      const lines = res.text.trimEnd().split('\r\n').slice(1);
      assert.equal(lines.length, n);
      const quotedCell = `,"${quoted.replace(/"/g, '""')}",`;
      assert.equal(lines.filter((l) => l.includes(quotedCell)).length, n / 3, 'RFC 4180 quoting');
      // Without the quoted cell every comma separates cells.
      const cells = lines.map((l) => l.replace(quotedCell, ',,').split(','));
      const order = cells.map((c) => `${c[CALLER_EXPORT_COLUMNS.indexOf('settled_at')]} ${c[0]}`);
      assert.equal(new Set(order).size, n, 'no row repeated');
      assert.deepEqual(order, [...order].sort(), 'in (settled_at, request_id) order');
      const col = CALLER_EXPORT_COLUMNS.indexOf('charge_micros');
      const total = cells.reduce((s, c) => s + BigInt(c[col]!), 0n);
      assert.equal(total, BigInt(n * 1000 + (n * (n - 1)) / 2));
      const report = await request(t.url).get('/v1/usage').set(bearer(key));
      assert.equal(report.body.totals.cost_usd, formatUsd(total));
    });
  });
});
