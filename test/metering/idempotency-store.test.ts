import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { it } from 'node:test';
import { createIdempotencyStore } from '../../src/metering/idempotency-store.js';
import { describeEachDialect } from '../helpers/databases.js';

function manualClock(start: string): { clock: () => Date; advance(ms: number): void } {
  let now = Date.parse(start);
  return { clock: () => new Date(now), advance: (ms) => (now += ms) };
}

describeEachDialect('idempotency store', ({ open, storage }) => {
  const base = () => ({ keyId: 'key-1', idemKey: randomUUID(), bodyHash: 'hash-a', ttlS: 60 });

  it('claims a new key, reports it running, then replays the stored response', async () => {
    const store = createIdempotencyStore(await open());
    const input = base();
    assert.deepEqual(await store.begin({ ...input, requestId: 'r1' }), { state: 'new' });
    assert.deepEqual(await store.begin({ ...input, requestId: 'r2' }), { state: 'running', requestId: 'r1', leaseId: null });
    const response = { created: 1, data: [{ url: 'https://x/1.png' }], meta: { usage: { credits_used: 10500 } } };
    assert.equal(await store.complete({ keyId: input.keyId, idemKey: input.idemKey, statusCode: 200, response, requestId: 'r1' }), true);
    assert.deepEqual(await store.begin({ ...input, requestId: 'r3' }), { state: 'done', statusCode: 200, response, requestId: 'r1' });
    // A second completion finds no running claim.
    assert.equal(await store.complete({ keyId: input.keyId, idemKey: input.idemKey, statusCode: 500, response: {} }), false);
  });

  it('answers mismatch for the same key with another body, running or done', async () => {
    const store = createIdempotencyStore(await open());
    const input = base();
    await store.begin({ ...input, requestId: 'r1' });
    assert.deepEqual(await store.begin({ ...input, bodyHash: 'hash-b', requestId: 'r2' }), { state: 'mismatch' });
    await store.complete({ keyId: input.keyId, idemKey: input.idemKey, statusCode: 502, response: { error: { code: 'x' } } });
    assert.deepEqual(await store.begin({ ...input, bodyHash: 'hash-b', requestId: 'r3' }), { state: 'mismatch' });
  });

  it('scopes keys per API key', async () => {
    const store = createIdempotencyStore(await open());
    const input = base();
    assert.deepEqual(await store.begin({ ...input, requestId: 'r1' }), { state: 'new' });
    assert.deepEqual(await store.begin({ ...input, keyId: 'key-2', requestId: 'r2' }), { state: 'new' });
  });

  it('forgets an abandoned claim, but never a completed one', async () => {
    const store = createIdempotencyStore(await open());
    const input = base();
    await store.begin({ ...input, requestId: 'r1' });
    assert.equal(await store.abandon({ keyId: input.keyId, idemKey: input.idemKey, requestId: 'other' }), false);
    assert.equal(await store.abandon({ keyId: input.keyId, idemKey: input.idemKey, requestId: 'r1' }), true);
    assert.deepEqual(await store.begin({ ...input, bodyHash: 'corrected', requestId: 'r2' }), { state: 'new' });
    await store.complete({ keyId: input.keyId, idemKey: input.idemKey, statusCode: 200, response: { ok: 1 } });
    assert.equal(await store.abandon({ keyId: input.keyId, idemKey: input.idemKey }), false);
    assert.equal((await store.begin({ ...input, bodyHash: 'corrected', requestId: 'r3' })).state, 'done');
  });

  it('a running claim names the lease of the process that will answer it, until detached', async () => {
    const store = createIdempotencyStore(await open());
    const input = base();
    const key = { keyId: input.keyId, idemKey: input.idemKey };
    await store.begin({ ...input, requestId: 'r1', leaseId: 'lease-a' });
    assert.deepEqual(await store.begin({ ...input, requestId: 'r2', leaseId: 'lease-b' }), { state: 'running', requestId: 'r1', leaseId: 'lease-a' });
    assert.equal(await store.detach({ ...key, requestId: 'other' }), false, 'only the claim of its own request');
    assert.equal(await store.detach({ ...key, requestId: 'r1' }), true);
    assert.deepEqual(await store.begin({ ...input, requestId: 'r2' }), { state: 'running', requestId: 'r1', leaseId: null });
    // Detached, it can still be completed with its answer.
    assert.equal(await store.complete({ ...key, requestId: 'r1', statusCode: 200, response: { n: 1 } }), true);
    assert.equal(await store.detach({ ...key, requestId: 'r1' }), false, 'a completed claim is left alone');
  });

  it('hands a running claim over to exactly one of several new requests, by compare-and-set on its request', async () => {
    const shared = await storage();
    const stores = await Promise.all([shared.open(), shared.open()]).then((dbs) => dbs.map((d) => createIdempotencyStore(d)));
    const input = base();
    const key = { keyId: input.keyId, idemKey: input.idemKey, ttlS: 60 };
    await stores[0]!.begin({ ...input, requestId: 'dead', leaseId: 'lease-dead' });
    const won = await Promise.all(Array.from({ length: 6 }, (_, i) => stores[i % 2]!.takeOver({ ...key, fromRequestId: 'dead', requestId: `r${i}`, leaseId: 'lease-live' })));
    assert.equal(won.filter(Boolean).length, 1);
    const winner = `r${won.indexOf(true)}`;
    assert.deepEqual(await stores[1]!.begin({ ...input, requestId: 'later' }), { state: 'running', requestId: winner, leaseId: 'lease-live' });
    assert.equal(await stores[0]!.takeOver({ ...key, fromRequestId: 'dead', requestId: 'late', leaseId: 'x' }), false, 'the old request no longer holds it');
    await stores[0]!.complete({ keyId: input.keyId, idemKey: input.idemKey, requestId: winner, statusCode: 200, response: {} });
    assert.equal(await stores[0]!.takeOver({ ...key, fromRequestId: winner, requestId: 'after', leaseId: 'x' }), false, 'a completed claim is never taken over');
  });

  it('replaces an expired record and purges expired ones', async () => {
    const time = manualClock('2025-01-01T00:00:00.000Z');
    const store = createIdempotencyStore(await open(), { clock: time.clock });
    const input = base();
    await store.begin({ ...input, requestId: 'r1' });
    await store.complete({ keyId: input.keyId, idemKey: input.idemKey, statusCode: 200, response: { n: 1 } });
    time.advance(59_999);
    assert.equal((await store.begin({ ...input, bodyHash: 'other', requestId: 'r2' })).state, 'mismatch');
    time.advance(1);
    // Expired: a different body is a new request now, not a mismatch.
    assert.deepEqual(await store.begin({ ...input, bodyHash: 'other', requestId: 'r2' }), { state: 'new' });
    assert.deepEqual(await store.begin({ ...input, bodyHash: 'other', requestId: 'r3' }), { state: 'running', requestId: 'r2', leaseId: null });

    const stale = base();
    await store.begin({ ...stale, ttlS: 1, requestId: 's1' });
    time.advance(1000);
    assert.ok((await store.purgeExpired()) >= 1);
    assert.deepEqual(await store.begin({ ...stale, requestId: 's2' }), { state: 'new' });
  });

  it('hands "new" to exactly one of many concurrent begins, across connections', async () => {
    const shared = await storage();
    const stores = await Promise.all([shared.open(), shared.open(), shared.open()]).then((dbs) => dbs.map((d) => createIdempotencyStore(d)));
    for (let round = 0; round < 5; round++) {
      const input = base();
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) => stores[i % stores.length]!.begin({ ...input, requestId: `r${i}` })),
      );
      assert.equal(results.filter((r) => r.state === 'new').length, 1);
      assert.equal(results.filter((r) => r.state === 'running').length, 11);
    }
  });

  it('hands "new" to exactly one of many concurrent takeovers of an expired record', async () => {
    const shared = await storage();
    const time = manualClock('2025-01-01T00:00:00.000Z');
    const stores = await Promise.all([shared.open(), shared.open(), shared.open()]).then((dbs) =>
      dbs.map((d) => createIdempotencyStore(d, { clock: time.clock })),
    );
    const input = base();
    await stores[0]!.begin({ ...input, requestId: 'old' });
    time.advance(61_000);
    const results = await Promise.all(Array.from({ length: 9 }, (_, i) => stores[i % 3]!.begin({ ...input, requestId: `r${i}` })));
    assert.equal(results.filter((r) => r.state === 'new').length, 1);
  });
});
