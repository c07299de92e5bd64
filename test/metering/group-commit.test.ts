import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { createGroup } from '../../src/metering/group-commit.js';

/** A write kind whose statements the test answers by hand, recording what left and how. */
function harness(maxBatch = 64, keysOf?: (item: string) => string[]) {
  const sent: Array<{ how: 'many' | 'one'; items: string[] }> = [];
  const pending: Array<{ settle: (outcome: Error | undefined) => void }> = [];
  const leave = (how: 'many' | 'one', items: string[]) =>
    new Promise<void>((resolve, reject) => {
      sent.push({ how, items });
      pending.push({ settle: (outcome) => (outcome ? reject(outcome) : resolve()) });
    });
  const failing = new Set<string>();
  const write = createGroup<string, string>({
    maxBatch,
    keysOf,
    async many(items) {
      await leave('many', [...items]);
      return items.map((i) => `${i}:done`);
    },
    async one(item) {
      await leave('one', [item]);
      if (failing.has(item)) throw new Error(`${item} refused`);
      return `${item}:alone`;
    },
  });
  /** Answers the oldest statement still on its way. */
  const answer = async (outcome?: Error) => {
    await until(() => pending.length > 0);
    pending.shift()!.settle(outcome);
  };
  return { sent, write, answer, failing };
}

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !done(); i++) await new Promise((r) => setImmediate(r));
  assert.ok(done(), 'the group never sent what was expected');
}

const refused = () => Object.assign(new pg.DatabaseError('deadlock detected', 0, 'error'), { code: '40P01' });

describe('group commit', () => {
  it('sends a lone write at once, alone', async () => {
    const h = harness();
    const out = h.write('a');
    assert.deepEqual(h.sent, [{ how: 'one', items: ['a'] }]);
    await h.answer();
    assert.equal(await out, 'a:alone');
  });

  it('sends the writes that queued behind one statement as one, each caller answered its own', async () => {
    const h = harness();
    const outs = ['a', 'b', 'c', 'd'].map((i) => h.write(i));
    assert.deepEqual(h.sent, [{ how: 'one', items: ['a'] }]);
    await h.answer();
    await h.answer();
    assert.deepEqual(await Promise.all(outs), ['a:alone', 'b:done', 'c:done', 'd:done']);
    assert.deepEqual(h.sent, [
      { how: 'one', items: ['a'] },
      { how: 'many', items: ['b', 'c', 'd'] },
    ]);
  });

  it('puts at most maxBatch writes in one statement', async () => {
    const h = harness(2);
    const outs = ['a', 'b', 'c', 'd', 'e'].map((i) => h.write(i));
    for (let i = 0; i < 3; i++) await h.answer();
    assert.deepEqual(await Promise.all(outs), ['a:alone', 'b:done', 'c:done', 'd:done', 'e:done']);
    assert.deepEqual(h.sent.map((s) => s.items), [['a'], ['b', 'c'], ['d', 'e']]);
  });

  it('sends each write of a batch the server refused again alone, so an error reaches only its own caller', async () => {
    const h = harness();
    h.failing.add('c');
    const outs = ['a', 'b', 'c', 'd'].map((i) => h.write(i).catch((e: Error) => e.message));
    await h.answer();
    await h.answer(refused());
    for (let i = 0; i < 3; i++) await h.answer();
    assert.deepEqual(await Promise.all(outs), ['a:alone', 'b:alone', 'c refused', 'd:alone']);
    assert.deepEqual(h.sent.map((s) => s.how), ['one', 'many', 'one', 'one', 'one']);
  });

  it('fails every caller of a batch whose session the server or a proxy ended (its commit unknown), and sends nothing again', async () => {
    for (const ended of [
      Object.assign(new pg.DatabaseError('terminating connection due to administrator command', 0, 'error'), { code: '57P01', severity: 'FATAL' }),
      Object.assign(new pg.DatabaseError('server conn crashed?', 0, 'error'), { code: '08P01', severity: 'FATAL' }),
    ]) {
      const h = harness();
      const outs = ['a', 'b', 'c'].map((i) => h.write(i).catch((e: Error) => e.message));
      await h.answer();
      await h.answer(ended);
      assert.deepEqual(await Promise.all(outs), ['a:alone', ended.message, ended.message]);
      assert.equal(h.sent.length, 2);
    }
  });

  it('sends a batch naming one key twice one write at a time, each caller answered by its own write', async () => {
    const h = harness(64, (item) => [item.slice(0, 1)]);
    h.failing.add('b2');
    const outs = ['a', 'b1', 'c', 'b2'].map((i) => h.write(i).catch((e: Error) => e.message));
    for (let i = 0; i < 4; i++) await h.answer();
    assert.deepEqual(await Promise.all(outs), ['a:alone', 'b1:alone', 'c:alone', 'b2 refused']);
    assert.deepEqual(h.sent.map((s) => s.how), ['one', 'one', 'one', 'one']);
  });

  it('fails every caller of a batch whose outcome is unknown (no answer from the server), and sends nothing again', async () => {
    const h = harness();
    const outs = ['a', 'b', 'c'].map((i) => h.write(i).catch((e: Error) => e.message));
    await h.answer();
    await h.answer(new Error('Connection terminated unexpectedly'));
    assert.deepEqual(await Promise.all(outs), ['a:alone', 'Connection terminated unexpectedly', 'Connection terminated unexpectedly']);
    assert.equal(h.sent.length, 2);
    // The kind goes on: the next write leaves at once.
    const next = h.write('d');
    await h.answer();
    assert.equal(await next, 'd:alone');
  });
});
