import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createCompletionHub } from '../../src/fal/webhooks.js';
import { createPollScheduler } from '../../src/fal/poll-scheduler.js';
import type { FalJobStatus } from '../../src/fal/gateway.js';

/** The records thousands of waiting jobs sit in: how each wait ends, and that an ended wait leaves nothing behind. */
describe('completion hub waits', () => {
  it('a wait ends with its callback, its signal or its timeout, and says which', async () => {
    const hub = createCompletionHub();
    const notified = hub.wait('a', undefined, 60_000);
    hub.notify('a');
    assert.equal(await notified, 'notified');

    const ac = new AbortController();
    const aborted = hub.wait('b', ac.signal, 60_000);
    ac.abort();
    assert.equal(await aborted, 'aborted');
    assert.equal(hub.waiting, 0, 'an aborted wait is forgotten');

    assert.equal(await hub.wait('c', undefined, 0), 'timeout');
    assert.equal(hub.waiting, 0, 'a timed-out wait is forgotten');
    assert.equal(hub.notify('c'), false, 'and its late callback is kept as early instead');
    assert.equal(await hub.wait('c'), 'notified');
  });

  it('an already aborted signal ends the wait at once', async () => {
    const hub = createCompletionHub();
    assert.equal(await hub.wait('x', AbortSignal.abort()), 'aborted');
    assert.equal(hub.waiting, 0);
  });

  it('two waits for one job are both woken, and one leaving does not drop the other', async () => {
    const hub = createCompletionHub();
    const ac = new AbortController();
    const first = hub.wait('j', ac.signal);
    const second = hub.wait('j');
    const third = hub.wait('j');
    ac.abort();
    assert.equal(await first, 'aborted');
    assert.equal(hub.waiting, 1);
    assert.equal(hub.notify('j'), true);
    assert.deepEqual(await Promise.all([second, third]), ['notified', 'notified']);
    assert.equal(hub.waiting, 0);
  });
});

describe('poll schedule', () => {
  /** A fal stand-in: each job answers the statuses listed for it, in order; every call is recorded. */
  function fakeFal(script: Record<string, Array<FalJobStatus['status'] | Error>>) {
    const calls: Array<{ id: string; at: number; signal: AbortSignal | undefined }> = [];
    const pending: Array<() => void> = [];
    return {
      calls,
      pending,
      poll: async (_endpoint: string, id: string, signal: AbortSignal | undefined): Promise<FalJobStatus> => {
        calls.push({ id, at: performance.now(), signal });
        const next = script[id]!.shift();
        if (next instanceof Error) throw next;
        return { status: next ?? 'IN_QUEUE' };
      },
    };
  }
  const aborted = (signal: AbortSignal) => Object.assign(new Error('aborted'), { reason: signal.reason });

  it('polls a job until COMPLETED, backing off, and tells each status', async () => {
    const fal = fakeFal({ j: ['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED'] });
    const polls = createPollScheduler({ poll: fal.poll, aborted, ratePerSecond: 0, maxDelayMs: 1000 });
    const seen: string[] = [];
    await polls.wait({ endpoint: 'e', falRequestId: 'j' }, undefined, (s) => seen.push(s.status), 20);
    assert.deepEqual(seen, ['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']);
    assert.equal(fal.calls.length, 3);
    // The second gap is the first × 1.5 (20 ms, then 30 ms); timers may fire a millisecond early.
    assert.ok(fal.calls[1]!.at - fal.calls[0]!.at >= 19, 'first delay kept');
    assert.ok(fal.calls[2]!.at - fal.calls[1]!.at >= 29, 'then grown by half');
    assert.equal(polls.waiting, 0);
  });

  it('sends no more polls than the budget allows: due jobs queue in order', async () => {
    const fal = fakeFal({ a: ['COMPLETED'], b: ['COMPLETED'], c: ['COMPLETED'] });
    const polls = createPollScheduler({ poll: fal.poll, aborted, ratePerSecond: 50, burst: 1, maxDelayMs: 1000 });
    const waits = ['a', 'b', 'c'].map((id) => polls.wait({ endpoint: 'e', falRequestId: id }, undefined, undefined, 10));
    assert.deepEqual(fal.calls.map((c) => c.id), ['a'], 'one token: one poll now, the rest wait their turn');
    assert.equal(polls.waiting, 3);
    await Promise.all(waits);
    assert.deepEqual(fal.calls.map((c) => c.id), ['a', 'b', 'c']);
    assert.equal(polls.waiting, 0);
  });

  it('an aborted job leaves at once, with the abort error, and the next due job gets its token', async () => {
    const fal = fakeFal({ a: ['IN_QUEUE', 'COMPLETED'], b: ['COMPLETED'], c: ['COMPLETED'] });
    const polls = createPollScheduler({ poll: fal.poll, aborted, ratePerSecond: 20, burst: 1, maxDelayMs: 1000 });
    const first = polls.wait({ endpoint: 'e', falRequestId: 'a' }, undefined, undefined, 10);
    const ac = new AbortController();
    const gone = polls.wait({ endpoint: 'e', falRequestId: 'b' }, ac.signal, undefined, 10);
    const third = polls.wait({ endpoint: 'e', falRequestId: 'c' }, undefined, undefined, 10);
    ac.abort(new Error('caller left'));
    await assert.rejects(gone, (err: Error & { reason?: Error }) => err.message === 'aborted' && err.reason?.message === 'caller left');
    assert.equal(polls.waiting, 2);
    await Promise.all([first, third]);
    assert.ok(!fal.calls.some((c) => c.id === 'b'), 'the aborted job was never polled');
    assert.equal(polls.waiting, 0);
  });

  it('a poll that fails ends its wait with that error; polls carry the job\'s signal', async () => {
    const fal = fakeFal({ x: [new Error('fal is down')] });
    const polls = createPollScheduler({ poll: fal.poll, aborted, ratePerSecond: 0, maxDelayMs: 1000 });
    const ac = new AbortController();
    await assert.rejects(polls.wait({ endpoint: 'e', falRequestId: 'x' }, ac.signal, undefined, 10), /fal is down/);
    assert.equal(fal.calls[0]!.signal, ac.signal);
    assert.equal(polls.waiting, 0);
    await assert.rejects(polls.wait({ endpoint: 'e', falRequestId: 'x' }, AbortSignal.abort(), undefined, 10), /aborted/);
  });
});
