import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import request from 'supertest';
import { RequestStop, Shutdown } from '../../src/images/request-stop.js';
import { parseUsd } from '../../src/metering/money.js';
import { startTestService, TEST_KEY } from '../helpers/service.js';
import { requestRow } from '../helpers/requests.js';

/**
 * Why a request's fal work stops, on the request's one AbortController
 * whose signal its fal calls carry: which cause stopped it, what reason the
 * signal carries, and that nothing holds it once disposed.
 */
describe('RequestStop', () => {
  it('the caller leaving (its side aborts the controller) is reported as client_gone, with the caller’s reason', () => {
    const request = new AbortController();
    const shutdown = new Shutdown(undefined);
    const stop = new RequestStop(request, shutdown);
    assert.equal(shutdown.size, 1);
    assert.equal(stop.signal, request.signal, 'one controller per request');
    assert.equal(stop.reason(), undefined);
    const why = new Error('caller went away');
    request.abort(why);
    assert.equal(stop.signal.aborted, true);
    assert.equal(stop.signal.reason, why);
    assert.equal(stop.reason(), 'client_gone');
    stop.dispose();
    assert.equal(shutdown.size, 0);
  });

  it('a caller already gone is reported at once; with no controller given, one is made', () => {
    const request = new AbortController();
    request.abort(new Error('left early'));
    const gone = new RequestStop(request, undefined);
    assert.equal(gone.reason(), 'client_gone');
    gone.dispose();
    const own = new RequestStop(undefined, undefined);
    assert.equal(own.signal.aborted, false);
    own.dispose();
  });

  it('with no reason given, the signal’s reason is an AbortError; the first stop’s reason stays', () => {
    const stop = new RequestStop(new AbortController(), undefined);
    stop.stop('sibling');
    assert.equal((stop.signal.reason as DOMException).name, 'AbortError');
    const first = stop.signal.reason;
    stop.stop('deadline', new Error('later'));
    assert.equal(stop.signal.reason, first);
    stop.dispose();
  });

  it('the deadline aborts with a TimeoutError, as AbortSignal.timeout does', async () => {
    const stop = new RequestStop(new AbortController(), undefined);
    stop.startDeadline(1);
    await once(stop.signal, 'abort');
    assert.equal((stop.signal.reason as DOMException).name, 'TimeoutError');
    assert.equal(stop.reason(), 'deadline');
    stop.dispose();
  });

  it('shutdown reaches every live request, and a request that starts after it is stopped at once', () => {
    const signal = new AbortController();
    const shutdown = new Shutdown(signal.signal);
    const a = new RequestStop(new AbortController(), shutdown);
    const b = new RequestStop(new AbortController(), shutdown);
    signal.abort();
    assert.deepEqual([a.reason(), b.reason()], ['shutdown', 'shutdown']);
    const late = new RequestStop(new AbortController(), shutdown);
    assert.equal(late.signal.aborted, true);
    assert.equal(late.reason(), 'shutdown');
    for (const r of [a, b, late]) r.dispose();
    assert.equal(shutdown.size, 0);
  });

  it('a failed sibling stops the work but is no reason, and stays the end of it: the request failed on fal’s answer', () => {
    const request = new AbortController();
    const stop = new RequestStop(request, undefined);
    stop.stop('sibling');
    assert.equal(stop.signal.aborted, true);
    assert.equal(stop.reason(), undefined);
    request.abort(new Error('gone'));
    assert.equal(stop.reason(), undefined);
    stop.dispose();
  });

  it('the first cause is the one reported', () => {
    for (const [first, then] of [['deadline', 'shutdown'], ['shutdown', 'deadline']] as const) {
      const stop = new RequestStop(new AbortController(), undefined);
      stop.stop(first);
      stop.stop(then);
      assert.equal(stop.reason(), first);
      stop.dispose();
    }
    const request = new AbortController();
    const stop = new RequestStop(request, undefined);
    request.abort();
    stop.stop('deadline');
    assert.equal(stop.reason(), 'client_gone');
    stop.dispose();
  });

  it('once disposed, its deadline never fires', async () => {
    const stop = new RequestStop(new AbortController(), undefined);
    stop.startDeadline(1);
    stop.dispose();
    // The timer was cleared: past its due time the signal is still untouched.
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(stop.signal.aborted, false);
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
        assert.equal(cancelLine?.client_request_id, `req_shutdown_${mode}_0001`);
        assert.match(String(cancelLine?.request_id), /^req_[0-9a-f]{32}$/, 'ours beside the caller’s');
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
        const row = await requestRow(again.service, res.headers['x-request-id'] as string);
        assert.equal(row?.upstreamCostMicros, billed);
      } finally {
        await again.close();
      }
    } finally {
      await d.emulator.close();
    }
  });
});
