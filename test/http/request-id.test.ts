/**
 * Our request ids: `req_` + 32 lowercase hex digits (the shape migration
 * 0005 recognises as ours), time first, so ids made later sort later and
 * the ledger's primary-key indexes grow at one edge.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { newRequestId } from '../../src/http/request-id.js';

it('has the shape of ours and starts with its milliseconds', () => {
  const at = Date.UTC(2026, 11, 7, 23, 0, 0, 123);
  const id = newRequestId(at);
  assert.match(id, /^req_[0-9a-f]{32}$/);
  assert.equal(parseInt(id.slice(4, 16), 16), at);
});

it('sorts by creation time across milliseconds, as text and in the same length', () => {
  const times = [1, 255, 256, 1_700_000_000_000, 1_800_000_000_001, 2 ** 48 - 1];
  const ids = times.map((t) => newRequestId(t));
  assert.deepEqual([...ids].sort(), ids);
  assert.ok(ids.every((id) => id.length === 36));
});

it('keeps 80 random bits: ids of the same millisecond differ', () => {
  const ids = new Set(Array.from({ length: 10_000 }, () => newRequestId(1_765_000_000_000)));
  assert.equal(ids.size, 10_000);
  const tails = [...ids].map((id) => id.slice(16));
  assert.ok(tails.every((t) => /^[0-9a-f]{20}$/.test(t)));
  // Every hex digit appears in every random position (not a counter or a fixed nibble).
  for (let p = 0; p < 20; p++) assert.equal(new Set(tails.map((t) => t[p])).size, 16, `position ${p}`);
});
