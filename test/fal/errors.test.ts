import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEmulator, type Emulator, type FaultSpec } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError, type FalGateway } from '../../src/fal/gateway.js';
import { errorTypeOf } from '../../src/fal/errors.js';

/**
 * What a failed fal call carries up from fal's answer, through the real
 * client and the emulator: fal's error type, its retry hint and the units a
 * failed job billed (src/fal/errors.ts, read in src/fal/fal-call.ts).
 */
const ENDPOINT = 'fal-ai/z-image/turbo';

describe('FalCallError keeps what fal said', () => {
  let emu: Emulator;
  let fal: FalGateway;
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 20, imageMode: 'cheap' });
    fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url, retry: { submit: { attempts: 1, baseDelayMs: 0, maxDelayMs: 0 } } });
  });
  after(() => emu.close());

  async function failedResult(prompt: string, fault: Omit<FaultSpec, 'prompt_contains'>): Promise<FalCallError> {
    emu.armFault({ ...fault, prompt_contains: prompt } as FaultSpec);
    const { falRequestId } = await fal.submit(ENDPOINT, { prompt, image_size: 'square' });
    await fal.waitForCompletion(ENDPOINT, falRequestId, { signal: AbortSignal.timeout(30_000) });
    const err = await fal.result(ENDPOINT, falRequestId).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof FalCallError, String(err));
    return err;
  }

  it('a content-policy refusal: its type from the detail list, not retryable, and the units it billed', async () => {
    const err = await failedResult('policy case', { kind: 'content_policy', categories: ['violence'] });
    assert.equal(err.status, 422);
    assert.equal(err.errorType, 'content_policy_violation');
    assert.equal(err.retryable, false);
    const billed = emu.billing().find((b) => b.request_id === err.falRequestId);
    assert.ok(billed, 'the emulator billed the refusal');
    assert.equal(err.billableUnits, billed.units);
  });

  it('fal\'s own failure after start: X-Fal-Error-Type and X-Fal-Retryable, zero units', async () => {
    const err = await failedResult('runner 503 case', { kind: 'fail_after_start', status: 503 });
    assert.equal(err.status, 503);
    assert.equal(err.errorType, 'runner_disconnected');
    assert.equal(err.retryable, true);
    assert.equal(err.billableUnits, '0');
  });

  it('a refused submit: the hints survive submit-once\'s rewrap', async () => {
    emu.armFault({ phase: 'submit', status: 503, retry_after: 0, prompt_contains: 'refused submit' });
    const err = await fal.submit(ENDPOINT, { prompt: 'refused submit' }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.phase, 'submit');
    assert.equal(err.retryable, true);
    assert.equal(err.errorType, 'runner_disconnected');
    assert.equal(err.ambiguous, false);
  });

  it('a network failure carries no hint', async () => {
    emu.armFault({ phase: 'submit', kind: 'reset', prompt_contains: 'reset submit' });
    const err = await fal.submit(ENDPOINT, { prompt: 'reset submit' }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.kind, 'network');
    assert.equal(err.retryable, undefined);
    assert.equal(err.errorType, undefined);
  });

  it('errorTypeOf reads both of fal\'s error shapes', () => {
    assert.equal(errorTypeOf({ detail: 'Request timed out', error_type: 'request_timeout' }), 'request_timeout');
    assert.equal(errorTypeOf({ detail: [{ loc: ['body', 'prompt'], msg: 'flagged', type: 'content_policy_violation' }] }), 'content_policy_violation');
    assert.equal(errorTypeOf({ detail: 'plain' }), undefined);
    assert.equal(errorTypeOf(undefined), undefined);
  });
});
