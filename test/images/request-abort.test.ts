import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import request from 'supertest';
import { RequestAbort } from '../../src/images/generate.js';
import { DeadlineQueue } from '../../src/deadline-queue.js';
import { parseUsd } from '../../src/metering/money.js';
import { startTestService, TEST_KEY } from '../helpers/service.js';

/**
 * The one controller a request's fal work runs under: which cause aborted it,
 * what reason its signal carries, and that nothing holds it once disposed.
 */
describe('RequestAbort', () => {
  it('the caller leaving aborts with the caller’s reason and is reported as client_gone', () => {
    const caller = new AbortController();
    const live = new Set<RequestAbort>();
    const cut = new RequestAbort(caller.signal, live, undefined);
    assert.equal(live.size, 1);
    assert.equal(cut.cause(), undefined);
    const why = new Error('caller went away');
    caller.abort(why);
    assert.equal(cut.signal.aborted, true);
    assert.equal(cut.signal.reason, why);
    assert.equal(cut.cause(), 'client_gone');
    cut.dispose();
    assert.equal(live.size, 0);
  });

  it('is an abort signal for fal calls without being an AbortController: listeners hear it once, in order, then never again', () => {
    const caller = { goneReason: undefined as unknown, watcher: undefined as { callerGone(r: unknown): void } | undefined, watch(w: { callerGone(r: unknown): void } | undefined) { this.watcher = w; } };
    const cut = new RequestAbort(caller, new Set(), undefined);
    const heard: string[] = [];
    const fn = () => heard.push('function');
    const obj = { handleEvent: (e: Event) => heard.push(`object:${e.type}`) };
    const removed = () => heard.push('removed');
    cut.addEventListener('abort', fn);
    cut.addEventListener('abort', obj);
    cut.addEventListener('abort', removed);
    cut.removeEventListener('abort', removed);
    assert.equal(cut.aborted, false);
    const why = new Error('caller went away');
    caller.watcher!.callerGone(why);
    assert.deepEqual(heard, ['function', 'object:abort']);
    assert.equal(cut.aborted, true);
    assert.equal(cut.reason, why);
    assert.equal(cut.cause(), 'client_gone');
    cut.abort('sibling');
    cut.addEventListener('abort', fn);
    assert.deepEqual(heard, ['function', 'object:abort'], 'once only, and a late listener is never called');
    assert.equal(cut.signal.aborted, true, 'a real signal made after the abort starts aborted');
    assert.equal(cut.signal.reason, why);
    cut.dispose();
  });

  it('a real signal made before the abort follows it; with no reason given, the reason is an AbortError', () => {
    const cut = new RequestAbort(new AbortController().signal, new Set(), undefined);
    const real = cut.signal;
    assert.equal(real.aborted, false);
    cut.abort('sibling');
    assert.equal(real.aborted, true);
    assert.equal((cut.reason as DOMException).name, 'AbortError');
    assert.equal(real.reason, cut.reason);
    assert.equal(cut.cause(), undefined, 'a sibling failing is no cause');
    cut.dispose();
  });

  it('the deadline aborts with a TimeoutError, as AbortSignal.timeout did', async () => {
    const cut = new RequestAbort(new AbortController().signal, new Set(), undefined);
    cut.startDeadline(DeadlineQueue.forLength(1));
    await once(cut.signal, 'abort');
    assert.equal((cut.signal.reason as DOMException).name, 'TimeoutError');
    assert.equal(cut.cause(), 'deadline');
    cut.dispose();
  });

  it('shutdown reaches every live request through the set, and a request that started after it is aborted at once', () => {
    const shutdown = new AbortController();
    const live = new Set<RequestAbort>();
    const a = new RequestAbort(new AbortController().signal, live, shutdown.signal);
    const b = new RequestAbort(new AbortController().signal, live, shutdown.signal);
    for (const r of live) r.abort('shutdown', shutdown.signal.reason);
    shutdown.abort();
    assert.deepEqual([a.cause(), b.cause()], ['shutdown', 'shutdown']);
    const late = new RequestAbort(new AbortController().signal, live, shutdown.signal);
    assert.equal(late.signal.aborted, true);
    assert.equal(late.cause(), 'shutdown');
    for (const r of [a, b, late]) r.dispose();
    assert.equal(live.size, 0);
  });

  it('a failed sibling aborts the work but is no reason; a caller who leaves afterwards still is', () => {
    const caller = new AbortController();
    const cut = new RequestAbort(caller.signal, new Set(), undefined);
    cut.abort('sibling');
    assert.equal(cut.signal.aborted, true);
    assert.equal(cut.cause(), undefined);
    caller.abort(new Error('gone'));
    assert.equal(cut.cause(), 'client_gone');
    cut.dispose();
  });

  it('the caller outranks the deadline, and the deadline outranks shutdown, whichever came first', () => {
    const caller = new AbortController();
    const cut = new RequestAbort(caller.signal, new Set(), undefined);
    cut.abort('shutdown');
    assert.equal(cut.cause(), 'shutdown');
    cut.abort('deadline');
    assert.equal(cut.cause(), 'deadline');
    caller.abort();
    assert.equal(cut.cause(), 'client_gone');
    cut.dispose();
  });

  it('once disposed, the caller’s signal no longer reaches it and its deadline never fires', async () => {
    const caller = new AbortController();
    const cut = new RequestAbort(caller.signal, new Set(), undefined);
    cut.startDeadline(DeadlineQueue.forLength(1));
    cut.dispose();
    caller.abort();
    // The timer was cleared: past its due time the signal is still untouched.
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(cut.signal.aborted, false);
  });
});

/**
 * Shutdown past its grace period, through the real service: a request whose
 * fal job is still waiting is answered 503 and its job cancelled, whether it
 * waits on a status stream or on a webhook. The request's log lines keep its
 * id and model.
 */
describe('shutdown aborts waiting jobs', () => {
  for (const mode of ['stream', 'webhook'] as const) {
    it(`${mode}: answered 503 shutting_down, fal job cancelled, not billed (emulator kinder: cancel_stops_running)`, async () => {
      const env: Record<string, string> = { SHUTDOWN_GRACE_MS: '100' };
      if (mode === 'webhook') Object.assign(env, { FAL_WEBHOOKS: 'true', PUBLIC_BASE_URL: 'http://127.0.0.1:9', FAL_WEBHOOK_GRACE_MS: '600000' });
      const d = await startTestService(env, { kinder: ['cancel_stops_running'] });
      let closed = false;
      try {
        d.emulator.armFault({ kind: 'never_finish', prompt_contains: 'until shutdown' });
        const pending = request(d.url)
          .post('/v1/images/generations')
          .set('Authorization', `Bearer ${TEST_KEY}`)
          .set('x-request-id', `req_shutdown_${mode}_0001`)
          .send({ model: 'alibaba/z-image-turbo', prompt: 'until shutdown' })
          .then((r) => r);
        while (d.emulator.jobs().length === 0) await new Promise((r) => setTimeout(r, 10));
        const closing = d.service.close();
        const res = await pending;
        assert.equal(res.status, 503);
        assert.equal(res.body.error.code, 'shutting_down');
        await closing;
        closed = true;
        assert.equal(d.emulator.jobs()[0]?.outcome, 'cancelled');
        assert.equal(d.emulator.billing().length, 0);
        const cancelLine = d.logs.find((l) => l.msg === 'fal job cancel');
        assert.equal(cancelLine?.request_id, `req_shutdown_${mode}_0001`);
        assert.equal(cancelLine?.model, 'alibaba/z-image-turbo');
      } finally {
        if (!closed) await d.close();
        else await d.emulator.close();
      }
    });
  }
});

describe('shutdown on real fal', () => {
  it('the running job fal only signalled runs on and bills; after a restart the ledger holds what fal billed', async () => {
    const d = await startTestService({ SHUTDOWN_GRACE_MS: '100' });
    try {
      d.emulator.armFault({ kind: 'never_finish', prompt_contains: 'until shutdown' });
      const pending = request(d.url)
        .post('/v1/images/generations')
        .set('Authorization', `Bearer ${TEST_KEY}`)
        .send({ model: 'alibaba/z-image-turbo', prompt: 'until shutdown' })
        .then((r) => r);
      while (d.emulator.jobs().length === 0) await new Promise((r) => setTimeout(r, 10));
      const closing = d.service.close();
      const res = await pending;
      await closing;
      assert.equal(res.status, 503);
      assert.equal(res.headers['x-should-retry'], 'false', 'fal may bill the job: a retry would pay twice');
      const job = d.emulator.jobs()[0]!;
      assert.equal(job.status, 'IN_PROGRESS', 'fal only signalled the running job');
      d.emulator.finishJob(job.request_id);
      const billed = d.emulator.billing().reduce((s, b) => s + parseUsd(b.usd), 0n);
      const again = await startTestService({ DATA_DIR: d.dataDir }, { use: d.emulator });
      try {
        await again.service.reconciler.run({ olderThanMs: 0 });
        const row = await again.service.ledger.getRequest(res.headers['x-request-id'] as string);
        assert.equal(row?.upstreamCostMicros, billed);
      } finally {
        await again.close();
      }
    } finally {
      await d.emulator.close();
    }
  });
});
