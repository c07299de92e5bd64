import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FalCallError, type FalCallErrorInit } from '../../src/fal/errors.js';
import { mapFalError, type MapContext } from '../../src/fal/upstream-errors.js';

/**
 * fal's failures as our answers (src/fal/upstream-errors.ts): status,
 * code, param, and `x-should-retry`, which says `true` only where fal refused
 * before any job existed and says a resend may work, and `false` wherever a
 * job may exist (a resend could bill twice).
 */

const policyBody = {
  detail: [
    { loc: ['body', 'prompt'], msg: 'The content was flagged by a content checker.', type: 'content_policy_violation', input: 'the secret prompt', categories: ['violence', 'sexual'] },
  ],
};

interface Row {
  name: string;
  err: FalCallErrorInit;
  ctx?: Partial<MapContext>;
  status: number;
  code: string;
  type?: string;
  param?: string | null;
  shouldRetry: boolean | undefined;
}

const rows: Row[] = [
  {
    name: 'content policy after the job ran: 400 content_policy_violation on prompt, never retried',
    err: { phase: 'result', kind: 'http', status: 422, body: policyBody, retryable: false, billableUnits: '1' },
    ctx: { submitted: true },
    status: 400, code: 'content_policy_violation', type: 'invalid_request_error', param: 'prompt', shouldRetry: false,
  },
  {
    name: 'content policy named by X-Fal-Error-Type on a flat body, field sent under another name',
    err: { phase: 'result', kind: 'http', status: 422, body: { detail: [{ loc: ['body', 'num_images'], msg: 'x', type: 'x' }] }, errorType: 'content_policy_violation' },
    ctx: { submitted: true, fieldOrigins: { num_images: 'n' } },
    status: 400, code: 'content_policy_violation', param: 'n', shouldRetry: false,
  },
  {
    name: 'a refused submit fal calls retryable (503): nothing billed, retry invited',
    err: { phase: 'submit', kind: 'http', status: 503, retryable: true, errorType: 'runner_disconnected' },
    status: 502, code: 'upstream_error', shouldRetry: true,
  },
  {
    name: 'a retryable answer after the job exists: no retry (it could bill twice)',
    err: { phase: 'result', kind: 'http', status: 503, retryable: true },
    ctx: { submitted: true },
    status: 502, code: 'upstream_error', shouldRetry: false,
  },
  {
    name: 'an ambiguous submit (502) whatever fal hints: no retry',
    err: { phase: 'submit', kind: 'http', status: 502, retryable: true, ambiguous: true },
    status: 502, code: 'upstream_error', shouldRetry: false,
  },
  {
    name: 'fal refuses our key (not retryable): our 502 tells the SDK not to resend',
    err: { phase: 'submit', kind: 'http', status: 401, retryable: false },
    status: 502, code: 'upstream_auth_failed', shouldRetry: false,
  },
  {
    name: 'a 429 keeps its retry-after; fal\'s hint does not turn it off',
    err: { phase: 'submit', kind: 'http', status: 429, retryAfterS: 7, retryable: false },
    status: 429, code: 'upstream_rate_limited', shouldRetry: undefined,
  },
  {
    name: 'a 422 refused at submit: 400 naming the field; the SDK does not retry a 400, so no header',
    err: { phase: 'submit', kind: 'http', status: 422, body: { detail: [{ loc: ['body', 'prompt'], msg: 'too long', type: 'value_error' }] }, retryable: false },
    status: 400, code: 'upstream_validation_error', param: 'prompt', shouldRetry: undefined,
  },
  {
    name: 'no hint at all and nothing submitted: the status decides, as before',
    err: { phase: 'submit', kind: 'http', status: 500 },
    status: 502, code: 'upstream_error', shouldRetry: undefined,
  },
];

describe('mapFalError', () => {
  for (const r of rows) {
    it(r.name, () => {
      const mapped = mapFalError(new FalCallError('fal failed', r.err), { submitted: false, fieldOrigins: {}, ...r.ctx });
      assert.equal(mapped.status, r.status);
      assert.equal(mapped.code, r.code);
      if (r.type) assert.equal(mapped.type, r.type);
      if (r.param !== undefined) assert.equal(mapped.param, r.param);
      assert.equal(mapped.shouldRetry, r.shouldRetry);
      if (r.code === 'upstream_rate_limited') assert.equal(mapped.retryAfterS, 7);
    });
  }

  it('a content-policy message names the categories and never echoes the flagged input', () => {
    const mapped = mapFalError(new FalCallError('fal failed', { phase: 'result', kind: 'http', status: 422, body: policyBody }), { submitted: true, fieldOrigins: {} });
    assert.match(mapped.message, /content checker/);
    assert.match(mapped.message, /violence, sexual/);
    assert.doesNotMatch(mapped.message, /secret prompt/);
  });
});
