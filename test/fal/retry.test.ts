import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { backoffMs, decide, DEFAULT_RETRY, neverSent, parseRetryAfter, provesNoJob, type Outcome, type RetryPolicy } from '../../src/fal/retry.js';
import type { FalPhase } from '../../src/fal/errors.js';

/** The retry rules of src/fal/retry.ts, as a table: phase, attempt, outcome → decision. */
describe('fal retry rules', () => {
  const policy: RetryPolicy = { attempts: 3, baseDelayMs: 100, maxDelayMs: 1000 };
  const CAP = 5000;
  // random 0.5 is the middle of the jitter: the delay is the plain backoff.
  const cases: Array<{ name: string; phase: FalPhase; attempt?: number; o: Outcome; retry: false | number; cap?: number }> = [
    // A submit is sent again only on proof that fal made no job.
    { name: 'submit: connection refused (never sent)', phase: 'submit', o: { failed: 'never_sent' }, retry: 100 },
    { name: 'submit: 429 refusal, retry-after honoured', phase: 'submit', o: { status: 429, retryAfterS: 2 }, retry: 2000 },
    { name: 'submit: 503 refusal', phase: 'submit', o: { status: 503 }, retry: 100 },
    { name: 'submit: reset after sending may have made a job', phase: 'submit', o: { failed: 'after_sending' }, retry: false },
    { name: 'submit: 500', phase: 'submit', o: { status: 500 }, retry: false },
    { name: 'submit: 502', phase: 'submit', o: { status: 502 }, retry: false },
    { name: 'submit: 504', phase: 'submit', o: { status: 504 }, retry: false },
    { name: 'submit: 422 is an answer', phase: 'submit', o: { status: 422 }, retry: false },
    { name: 'submit: a body that broke off', phase: 'submit', o: { failed: 'body_broken' }, retry: false },
    // Reads and cancels are asked again on transient outcomes.
    { name: 'status: 500', phase: 'status', o: { status: 500 }, retry: 100 },
    { name: 'status: 502, second attempt doubles', phase: 'status', attempt: 2, o: { status: 502 }, retry: 200 },
    { name: 'status: 504', phase: 'status', o: { status: 504 }, retry: 100 },
    { name: 'status: reset', phase: 'status', o: { failed: 'after_sending' }, retry: 100 },
    { name: 'status: 404 is an answer', phase: 'status', o: { status: 404 }, retry: false },
    { name: 'status: 501 is an answer', phase: 'status', o: { status: 501 }, retry: false },
    { name: 'status: 200', phase: 'status', o: { status: 200 }, retry: false },
    { name: 'result: body broke off', phase: 'result', o: { failed: 'body_broken' }, retry: 100 },
    { name: 'result: 422 (the job failed)', phase: 'result', o: { status: 422 }, retry: false },
    { name: 'cancel: 503', phase: 'cancel', o: { status: 503 }, retry: 100 },
    { name: 'storage: refused connection', phase: 'storage', o: { failed: 'never_sent' }, retry: 100 },
    // The budget and the cap.
    { name: 'last attempt: no more', phase: 'status', attempt: 3, o: { status: 503 }, retry: false },
    { name: 'retry-after longer than the cap: the caller gets the answer', phase: 'status', o: { status: 429, retryAfterS: 30 }, retry: false },
    { name: 'retry-after at the cap is waited', phase: 'result', o: { status: 503, retryAfterS: 5 }, retry: 5000 },
    { name: 'retry-after 0', phase: 'submit', o: { status: 429, retryAfterS: 0 }, retry: 0 },
    { name: 'a smaller cap', phase: 'status', o: { status: 503, retryAfterS: 2 }, retry: false, cap: 1000 },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const d = decide(c.phase, policy, c.attempt ?? 1, c.o, c.cap ?? CAP, 0.5);
      assert.deepEqual(d, c.retry === false ? { retry: false } : { retry: true, delayMs: c.retry });
    });
  }

  it('the default budgets: streams and other calls are tried once', () => {
    assert.equal(decide('stream', DEFAULT_RETRY.stream, 1, { status: 503 }, CAP, 0.5).retry, false);
    assert.equal(decide('other', DEFAULT_RETRY.other, 1, { failed: 'after_sending' }, CAP, 0.5).retry, false);
    assert.equal(decide('status', DEFAULT_RETRY.status, 3, { status: 503 }, CAP, 0.5).retry, true);
    assert.equal(decide('status', DEFAULT_RETRY.status, 4, { status: 503 }, CAP, 0.5).retry, false);
  });

  it('backoff: doubling from baseDelayMs up to maxDelayMs, jitter ±25 %', () => {
    const p: RetryPolicy = { attempts: 10, baseDelayMs: 100, maxDelayMs: 1000 };
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffMs(p, a, 0.5)), [100, 200, 400, 800, 1000, 1000]);
    assert.equal(backoffMs(p, 1, 0), 75);
    assert.equal(backoffMs(p, 1, 0.999999), 125);
    assert.equal(backoffMs(p, 5, 0), 750);
  });

  it('proof of no job: only a connection never made, or a 429/503 refusal', () => {
    const table: Array<[Outcome, boolean]> = [
      [{ failed: 'never_sent' }, true],
      [{ failed: 'after_sending' }, false],
      [{ failed: 'body_broken' }, false],
      [{ status: 429 }, true],
      [{ status: 503 }, true],
      [{ status: 500 }, false],
      [{ status: 502 }, false],
      [{ status: 504 }, false],
      [{ status: 200 }, false],
      [{ status: 400 }, false],
    ];
    for (const [o, proof] of table) assert.equal(provesNoJob(o), proof, JSON.stringify(o));
  });

  it('which network failures happened before the request left', () => {
    const wrapped = (code: string) => Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(code), { code }) });
    assert.equal(neverSent(wrapped('ECONNREFUSED')), true);
    assert.equal(neverSent(wrapped('ENOTFOUND')), true);
    assert.equal(neverSent(wrapped('EAI_AGAIN')), true);
    assert.equal(neverSent(wrapped('UND_ERR_CONNECT_TIMEOUT')), true);
    assert.equal(neverSent(wrapped('ECONNRESET')), false);
    assert.equal(neverSent(wrapped('UND_ERR_SOCKET')), false);
    assert.equal(neverSent(new TypeError('fetch failed')), false);
    assert.equal(neverSent(undefined), false);
  });

  it('retry-after: -ms first, then seconds or an HTTP date', () => {
    const h = (m: Record<string, string>) => (name: string) => m[name] ?? null;
    assert.equal(parseRetryAfter(h({ 'retry-after-ms': '1500', 'retry-after': '9' })), 1.5);
    assert.equal(parseRetryAfter(h({ 'retry-after': '3' })), 3);
    assert.equal(parseRetryAfter(h({ 'retry-after': new Date(10_000).toUTCString() }), 4_000), 6);
    assert.equal(parseRetryAfter(h({ 'retry-after': new Date(1_000).toUTCString() }), 4_000), 0);
    assert.equal(parseRetryAfter(h({ 'retry-after': 'soon' })), undefined);
    assert.equal(parseRetryAfter(h({})), undefined);
  });
});
