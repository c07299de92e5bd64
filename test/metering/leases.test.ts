import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mayReconcile, nextForeignExpiry, reconcileScope } from '../../src/metering/leases.js';

const NOW = Date.parse('2026-12-07T12:00:00.000Z');
const OLDER_THAN_MS = 360_000;
const OLD = new Date(NOW - OLDER_THAN_MS - 1).toISOString();
const YOUNG = new Date(NOW - 1_000).toISOString();

// Leases as the table holds them at NOW: ours, a live peer, a peer whose lease expired a moment ago.
const scope = reconcileScope({
  ownLeaseId: 'own',
  leases: [
    { id: 'own', expiresAtMs: NOW + 9_000 },
    { id: 'peer', expiresAtMs: NOW + 1 },
    { id: 'dead', expiresAtMs: NOW },
  ],
  nowMs: NOW,
  olderThanMs: OLDER_THAN_MS,
});

describe('leases: who may reconcile what', () => {
  const table: Array<{ owner: string | null; createdAt: string; may: boolean; why: string }> = [
    { owner: 'dead', createdAt: YOUNG, may: true, why: 'an expired lease: its process is gone, settled at once' },
    { owner: 'dead', createdAt: OLD, may: true, why: 'an expired lease, old request' },
    { owner: 'gone', createdAt: YOUNG, may: true, why: 'a lease whose row was deleted (graceful shutdown): at once' },
    { owner: 'peer', createdAt: YOUNG, may: false, why: 'another process’s live lease: never' },
    { owner: 'peer', createdAt: OLD, may: false, why: 'another process’s live lease, however old the request' },
    { owner: 'own', createdAt: YOUNG, may: false, why: 'its own request still within RECONCILE_AFTER_MS: the process is working on it' },
    { owner: 'own', createdAt: OLD, may: true, why: 'its own request past RECONCILE_AFTER_MS: a leftover' },
    { owner: null, createdAt: YOUNG, may: false, why: 'no lease: the owner cannot be known, so age alone decides' },
    { owner: null, createdAt: OLD, may: true, why: 'no lease, old enough' },
  ];
  for (const row of table) {
    it(`${row.may ? 'may' : 'may not'}: ${row.why}`, () => {
      assert.equal(mayReconcile({ leaseId: row.owner, createdAt: row.createdAt }, scope), row.may);
    });
  }

  it('a lease expiring exactly now is expired; one a millisecond later is live', () => {
    assert.deepEqual(scope.live, ['own', 'peer']);
  });

  it('the age cut is strict: a request created exactly RECONCILE_AFTER_MS ago is not yet touched', () => {
    const exactly = new Date(NOW - OLDER_THAN_MS).toISOString();
    assert.equal(mayReconcile({ leaseId: 'own', createdAt: exactly }, scope), false);
  });

  it('a reconciler without a lease of its own treats every live lease as another process’s', () => {
    const noLease = reconcileScope({ ownLeaseId: undefined, leases: [{ id: 'own', expiresAtMs: NOW + 1 }], nowMs: NOW, olderThanMs: 0 });
    assert.equal(mayReconcile({ leaseId: 'own', createdAt: OLD }, noLease), false);
    assert.equal(mayReconcile({ leaseId: null, createdAt: OLD }, noLease), true);
  });
});

describe('leases: when to look again for a peer’s open requests', () => {
  const leases = [
    { id: 'own', expiresAtMs: NOW + 1_000 },
    { id: 'a', expiresAtMs: NOW + 8_000 },
    { id: 'b', expiresAtMs: NOW + 3_000 },
    { id: 'idle', expiresAtMs: NOW + 2_000 },
    { id: 'expired', expiresAtMs: NOW - 1 },
  ];
  const table: Array<{ owners: string[]; next: number | undefined; why: string }> = [
    { owners: ['a', 'b'], next: NOW + 3_000, why: 'the earliest expiry among peers owning open requests' },
    { owners: ['a'], next: NOW + 8_000, why: 'a peer with no open request is not waited for' },
    { owners: ['own'], next: undefined, why: 'its own lease is never waited for' },
    { owners: ['expired'], next: undefined, why: 'an expired lease’s requests are this round’s' },
    { owners: [], next: undefined, why: 'nothing open' },
  ];
  for (const row of table) {
    it(row.why, () => {
      assert.equal(nextForeignExpiry(leases, new Set(row.owners), 'own', NOW), row.next);
    });
  }
});
