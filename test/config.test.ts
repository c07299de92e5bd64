import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../src/config.js';

/** JOB_GIVE_UP_MS: when reconciliation stops waiting for fal (docs/BILLING.md, "Giving up"). */
describe('config: JOB_GIVE_UP_MS', () => {
  const base = { FAL_KEY: 'k', API_KEYS: 'sk-config-test-0123456789' };

  it('defaults to half an hour', () => {
    assert.equal(loadConfig(base).jobGiveUpMs, 30 * 60_000);
  });

  it('defaults above REQUEST_TIMEOUT_MS + LEASE_EXPIRY_MS when the deadline is long', () => {
    assert.equal(loadConfig({ ...base, REQUEST_TIMEOUT_MS: '3600000' }).jobGiveUpMs, 3_600_000 + 10_000 + 60_000);
  });

  it('refuses a give-up before a live process could have stopped waiting on the job', () => {
    assert.throws(
      () => loadConfig({ ...base, REQUEST_TIMEOUT_MS: '60000', JOB_GIVE_UP_MS: '70000' }),
      (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('JOB_GIVE_UP_MS (70000) must be more than REQUEST_TIMEOUT_MS + LEASE_EXPIRY_MS (70000)')),
    );
    assert.equal(loadConfig({ ...base, REQUEST_TIMEOUT_MS: '60000', JOB_GIVE_UP_MS: '70001' }).jobGiveUpMs, 70_001);
  });
});

/** HEAP_OPTIMIZE_FOR_SIZE: the memory-saving heap mode src/main.ts sets (src/optimize-for-size.ts). */
describe('config: HEAP_OPTIMIZE_FOR_SIZE', () => {
  const base = { FAL_KEY: 'k', API_KEYS: 'sk-config-test-0123456789' };

  it('is auto unless set, from 1,000 requests in progress; true and false force it', () => {
    assert.equal(loadConfig(base).heapOptimizeForSize, 'auto');
    assert.equal(loadConfig(base).heapOptimizeForSizeFrom, 1_000);
    assert.equal(loadConfig({ ...base, HEAP_OPTIMIZE_FOR_SIZE: 'AUTO', HEAP_OPTIMIZE_FOR_SIZE_FROM: '50' }).heapOptimizeForSizeFrom, 50);
    assert.equal(loadConfig({ ...base, HEAP_OPTIMIZE_FOR_SIZE: 'true' }).heapOptimizeForSize, true);
    assert.equal(loadConfig({ ...base, HEAP_OPTIMIZE_FOR_SIZE: 'false' }).heapOptimizeForSize, false);
    assert.equal(loadConfig({ ...base, HEAP_OPTIMIZE_FOR_SIZE: '0' }).heapOptimizeForSize, false);
  });

  it('refuses a value that is neither auto nor a boolean, naming the variable', () => {
    assert.throws(
      () => loadConfig({ ...base, HEAP_OPTIMIZE_FOR_SIZE: 'maybe' }),
      (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.includes('HEAP_OPTIMIZE_FOR_SIZE')),
    );
  });
});
