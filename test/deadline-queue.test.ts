import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DeadlineQueue, type Expiring } from '../src/deadline-queue.js';

function item(name: string, log: string[]): Expiring {
  return { expiresAt: 0, expire: () => log.push(name) };
}

describe('DeadlineQueue', () => {
  it('expires items in the order they were added, once each, and never a deleted one', async () => {
    const q = DeadlineQueue.forLength(200);
    const log: string[] = [];
    const a = item('a', log);
    const b = item('b', log);
    const c = item('c', log);
    q.add(a);
    await new Promise((r) => setTimeout(r, 5));
    q.add(b);
    q.add(c);
    q.delete(b);
    assert.equal(q.size, 2);
    assert.deepEqual(log, [], 'nothing before its time');
    while (log.length < 2) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(log, ['a', 'c']);
    assert.equal(q.size, 0);
  });

  it('is one queue per length', () => {
    assert.equal(DeadlineQueue.forLength(1234), DeadlineQueue.forLength(1234));
    assert.notEqual(DeadlineQueue.forLength(1234), DeadlineQueue.forLength(1235));
    assert.throws(() => DeadlineQueue.forLength(Number.NaN), RangeError);
  });
});
