/**
 * The caller's x-request-id is a label unique within its key; the ledger's
 * id is always ours. One key can neither learn (by a 409) that another used
 * an id nor block an id the other will send; reuse within a key is a 409.
 * Run on both databases, through the service, plus the migration of a
 * database written before labels existed (0004) with rows in it.
 */
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { Migrator } from 'kysely';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { OTHER_KEY, startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { migrations } from '../../src/db/migrations.js';
import { createLedger } from '../../src/metering/ledger.js';
import { createOutboxStore } from '../../src/metering/outbox-store.js';
import { billingEventId } from '../../src/metering/settlement.js';

const OURS = /^req_[0-9a-f]{32}$/;
const body = { model: 'alibaba/z-image-turbo', prompt: 'a label of its own', image_size: 'square' };

describeEachDialect('x-request-id is a label scoped to its key', ({ fresh }) => {
  let t: TestService;
  const keyIds = new Map<string, string>();
  const send = (key: string, label: string) => request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${key}`).set('x-request-id', label).send(body);

  before(async () => {
    const env = await serviceEnv(await fresh());
    // Events are written to the outbox with the charge; delivery to this closed port just keeps failing.
    t = await startTestService({ ...env, BILLING_WEBHOOK_URL: 'http://127.0.0.1:9/billing', BILLING_WEBHOOK_SECRET: 'request-ids-test-secret' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  const keyOf = async (key: string, label: string): Promise<string> => {
    const rows = await t.service.database.db.selectFrom('requests').select('key_id').where('client_request_id', '=', label).execute();
    assert.equal(rows.length, 1);
    return rows[0]!.key_id;
  };

  it("another key's label is no oracle: B sending A's id is answered as any new id, and A's is untouched", async () => {
    const label = `trace-${randomUUID()}`;
    const a = await send(TEST_KEY, label);
    assert.equal(a.status, 200, a.text);
    keyIds.set(TEST_KEY, await keyOf(TEST_KEY, label));
    const aRow = await t.service.ledger.getRequestByClientId(keyIds.get(TEST_KEY)!, label);

    const reused = await send(OTHER_KEY, label);
    const unused = await send(OTHER_KEY, `trace-${randomUUID()}`);
    assert.equal(reused.status, 200, reused.text);
    assert.equal(unused.status, 200, unused.text);
    assert.equal(reused.headers['x-request-id'], label, 'the label is echoed as sent');
    // Nothing in the answer tells a used label from an unused one.
    const shape = (r: request.Response) => ({ status: r.status, headers: Object.keys(r.headers).sort(), meta: Object.keys(r.body.meta).sort(), error: r.body.error });
    assert.deepEqual(shape(reused), shape(unused));
    assert.deepEqual(await t.service.ledger.getRequest(aRow!.id), aRow, "A's row is untouched");
  });

  it('B using a label first does not block A from it; reuse within one key is still 409', async () => {
    const label = `trace-${randomUUID()}`;
    assert.equal((await send(OTHER_KEY, label)).status, 200);
    assert.equal((await send(TEST_KEY, label)).status, 200, "B's use of the label does not block A");
    for (const key of [TEST_KEY, OTHER_KEY]) {
      const again = await send(key, label);
      assert.equal(again.status, 409, again.text);
      assert.equal(again.headers['x-request-id'], label);
      assert.deepEqual(again.body.error, { ...again.body.error, type: 'conflict_error', code: 'request_id_reused', param: 'x-request-id' });
    }
  });

  it('two keys with the same label land in the ledger under distinct ids of ours; logs and the billing event carry both', async () => {
    const label = `trace.${randomUUID()}`;
    const answers = [await send(TEST_KEY, label), await send(OTHER_KEY, label)];
    const ids = answers.map((r) => r.body.meta.request_id as string);
    for (const id of ids) assert.match(id, OURS);
    assert.notEqual(ids[0], ids[1]);
    const rows = await t.service.database.db.selectFrom('requests').select(['id', 'key_id', 'client_request_id', 'status']).where('client_request_id', '=', label).orderBy('id').execute();
    assert.equal(rows.length, 2);
    assert.deepEqual(rows.map((r) => r.id).sort(), [...ids].sort());
    assert.equal(new Set(rows.map((r) => r.key_id)).size, 2, 'one row per key');
    assert.ok(rows.every((r) => r.status === 'settled' && r.client_request_id === label));

    const outbox = createOutboxStore(t.service.database);
    for (const [i, id] of ids.entries()) {
      const event = await outbox.get(billingEventId(id));
      assert.ok(event, `the settlement of ${id} wrote its event`);
      const data = event.payload as Record<string, unknown>;
      assert.equal(data['request_id'], id, 'de-duplicated on our id');
      assert.equal(data['client_request_id'], label);
      assert.equal(data['key_id'], rows.find((r) => r.id === id)!.key_id);
      const line = t.logs.find((l) => l['msg'] === 'request' && l['request_id'] === id);
      assert.equal(line?.['client_request_id'], label, `the access log of answer ${i} carries both ids`);
    }
  });
});

describeEachDialect('migration 0005 on a database at 0004 with rows', ({ dialect, fresh }) => {
  it("keeps every id, labels the caller's ids, and the key's labels stay taken", async () => {
    const storage = await fresh();
    const database = await storage.open({ migrate: false });
    const migrator = new Migrator({
      db: database.db,
      provider: { getMigrations: async () => migrations(dialect) },
      ...(database.schema && dialect === 'postgres' ? { migrationTableSchema: database.schema } : {}),
    });
    const upTo4 = await migrator.migrateTo('0004_job_give_up');
    assert.equal(upTo4.error, undefined);
    const at = new Date().toISOString();
    const key = (id: string) => ({ id, name: id, key_hash: `hash-${id}`, role: 'user' as const, created_at: at, updated_at: at });
    await database.db.insertInto('api_keys').values([key('key-a'), key('key-b')]).execute();
    const ours = `req_${randomUUID().replace(/-/g, '')}`;
    const row = (id: string) => ({ id, key_id: 'key-a', model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', status: 'settled' as const, reserved_micros: 5000, created_at: at, settled_at: at });
    await (database.db as any).insertInto('requests').values([row('trace-0001.caller'), row(ours)]).execute();
    await database.db.insertInto('upstream_jobs').values({ id: `${ours}/0`, request_id: ours, endpoint: 'fal-ai/z-image/turbo', status: 'completed', created_at: at }).execute();

    const upTo5 = await migrator.migrateTo('0005_client_request_id');
    assert.equal(upTo5.error, undefined);
    assert.deepEqual(upTo5.results?.map((r) => r.migrationName), ['0005_client_request_id']);
    const after5 = await database.db.selectFrom('requests').select(['id', 'client_request_id']).orderBy('id').execute();
    assert.deepEqual(after5, [
      { id: ours, client_request_id: null },
      { id: 'trace-0001.caller', client_request_id: 'trace-0001.caller' },
    ].sort((x, y) => (x.id < y.id ? -1 : 1)));
    assert.equal((await database.db.selectFrom('upstream_jobs').select('request_id').executeTakeFirstOrThrow()).request_id, ours, 'jobs still name their request');

    // Today's ledger writes the later migrations' columns too.
    await database.migrate();
    const ledger = createLedger(database);
    const reserve = (keyId: string, label: string) =>
      ledger.reserve({ requestId: `req_${randomUUID().replace(/-/g, '')}`, clientRequestId: label, keyId, model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', maxChargeMicros: 1n });
    assert.deepEqual(await reserve('key-a', 'trace-0001.caller'), { ok: false, reason: 'request_id_taken' }, "the caller's old id stays taken for its key");
    assert.deepEqual(await reserve('key-b', 'trace-0001.caller'), { ok: true }, 'and free for another key');
    assert.deepEqual(await reserve('key-a', ours), { ok: true }, 'an id of our own shape carries no label');
  });
});
