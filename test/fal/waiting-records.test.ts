import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createCompletionHub } from '../../src/fal/webhooks.js';
import { createPacer } from '../../src/fal/pacer.js';

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

describe('poll pacer', () => {
  it('a queued poll whose job is aborted leaves the queue at once and lets the next one through', async () => {
    const pacer = createPacer(1, 1);
    await pacer.take();
    const ac = new AbortController();
    const abandoned = pacer.take(ac.signal);
    const next = pacer.take();
    assert.equal(pacer.queued, 2);
    ac.abort();
    await abandoned;
    assert.equal(pacer.queued, 1);
    await next;
    assert.equal(pacer.queued, 0);
  });
});
