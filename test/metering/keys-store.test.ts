import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createKeysStore, hashKey, KEY_PREFIX } from '../../src/metering/keys-store.js';
import { describeEachDialect } from '../helpers/databases.js';

describeEachDialect('keys store', ({ open, fresh }) => {
  it('creates a long random key, stores only its SHA-256, and finds it again', async () => {
    const database = await open();
    const keys = createKeysStore(database);
    const { record, key } = await keys.create({ name: 'billing', budgetMicros: 2n ** 60n, rpmLimit: 120 });
    assert.ok(key.startsWith(KEY_PREFIX));
    assert.ok(key.length >= KEY_PREFIX.length + 43, 'at least 32 random bytes');
    assert.deepEqual(
      [record.kind, record.name, record.role, record.enabled, record.budgetMicros, record.spentMicros, record.reservedMicros, record.rpmLimit],
      ['issued', 'billing', 'user', true, 2n ** 60n, 0n, 0n, 120],
    );
    const stored = await database.db.selectFrom('api_keys').selectAll().where('id', '=', record.id).executeTakeFirstOrThrow();
    assert.equal(stored.key_hash, hashKey(key));
    assert.ok(!JSON.stringify(stored, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)).includes(key));

    assert.deepEqual(await keys.findByKey(key), record);
    assert.deepEqual(await keys.findByHash(hashKey(key)), record);
    assert.equal(await keys.findByKey(key + 'x'), null);
    assert.equal(await keys.findByKey(''), null);
    assert.equal(await keys.findByHash('not-a-hash'), null);
    const second = await keys.create({ name: 'other' });
    assert.notEqual(second.key, key);
    assert.notEqual(second.record.id, record.id);
    assert.equal(second.record.budgetMicros, null);
  });

  it('updates, disables and lists', async () => {
    const storage = await fresh();
    const database = await storage.open();
    let t = Date.parse('2025-01-01T00:00:00Z');
    const keys = createKeysStore(database, { clock: () => new Date(t) });
    const { record, key } = await keys.create({ name: 'a', role: 'admin', budgetMicros: 5n });
    t += 1000;
    const updated = await keys.update(record.id, { name: 'b', budgetMicros: null, rpmLimit: 60, role: 'user' });
    assert.deepEqual(
      [updated?.name, updated?.budgetMicros, updated?.rpmLimit, updated?.role, updated?.updatedAt, updated?.createdAt],
      ['b', null, 60, 'user', '2025-01-01T00:00:01.000Z', '2025-01-01T00:00:00.000Z'],
    );
    const partial = await keys.update(record.id, { rpmLimit: null });
    assert.deepEqual([partial?.name, partial?.rpmLimit], ['b', null]);

    const disabled = await keys.disable(record.id);
    assert.equal(disabled?.enabled, false);
    // Disabled keys are still found: refusing them is the caller's decision, with a clear message.
    assert.equal((await keys.findByKey(key))?.enabled, false);
    assert.equal((await keys.update(record.id, { enabled: true }))?.enabled, true);

    assert.equal(await keys.update('missing', { name: 'x' }), null);
    assert.equal(await keys.disable('missing'), null);
    assert.equal(await keys.get('missing'), null);
    await keys.create({ name: 'c' });
    assert.deepEqual((await keys.list()).map((k) => k.name), ['b', 'c']);
  });

  it('rejects invalid roles, budgets and limits', async () => {
    const keys = createKeysStore(await open());
    await assert.rejects(keys.create({ name: 'x', budgetMicros: -1n }), RangeError);
    await assert.rejects(keys.create({ name: 'x', rpmLimit: 1.5 }), RangeError);
    await assert.rejects(keys.create({ name: 'x', role: 'root' as 'user' }), RangeError);
  });

  it('gives static keys a stable id and an unlimited row, idempotently, without making them authenticate from the table', async () => {
    const database = await open();
    const keys = createKeysStore(database);
    const key = 'sk-from-the-environment-' + Math.random();
    const [a, b] = await Promise.all([keys.ensureStatic(key), keys.ensureStatic(key)]);
    assert.equal(a.id, `static-${hashKey(key).slice(0, 8)}`);
    assert.deepEqual(a, b);
    assert.deepEqual([a.kind, a.budgetMicros, a.role, a.enabled], ['static', null, 'user', true]);
    assert.equal(await keys.findByKey(key), null);

    const admin = await keys.ensureStatic(key, { role: 'admin' });
    assert.equal(admin.role, 'admin');
    assert.equal(admin.id, a.id);

    // The hash-only form, as for a generated key whose plaintext is gone, or
    // an explicit id that follows rotation of the configured key.
    const rotated = 'sk-rotated-' + Math.random();
    const byHash = await keys.ensureStatic({ keyHash: hashKey(key), role: 'admin' });
    assert.equal(byHash.id, a.id);
    const envAdmin = await keys.ensureStatic({ id: 'admin-env-test', keyHash: hashKey(key), role: 'admin' });
    const afterRotation = await keys.ensureStatic({ id: 'admin-env-test', keyHash: hashKey(rotated), role: 'admin' });
    assert.equal(afterRotation.id, envAdmin.id);
    assert.notEqual(afterRotation.updatedAt, undefined);
    await assert.rejects(keys.ensureStatic({ keyHash: 'xyz' }), RangeError);
  });
});
