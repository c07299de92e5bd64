import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { parseUsd } from '../../src/metering/money.js';

/**
 * fal goes away in the middle of a job (the emulator is shut down, sockets
 * and all) and comes back later with its state. The caller gets a prompt 502
 * that tells SDKs not to retry; the request stays open, and reconciliation
 * settles it once fal can say what became of the job.
 */
describe('fal killed mid-job', () => {
  const cleanup: Array<() => Promise<void>> = [];
  after(async () => {
    for (const f of cleanup.reverse()) await f();
  });

  it('answers 502 without retry, never charges it, and records what fal billed once fal returns', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gw-killed-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const stateFile = join(dir, 'emulator-state.json');
    let emulator: Emulator = await startEmulator({ port: 0, latencyMs: 1500, stateFile, stateDebounceMs: 0 });
    const port = emulator.port;
    const t: TestService = await startTestService({ REQUEST_TIMEOUT_MS: '20000' }, { use: emulator });
    cleanup.push(() => t.close());

    const pending = request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ model: 'alibaba/z-image-turbo', prompt: 'killed mid-job', image_size: 'square' });
    const responded = pending.then((r) => r);
    for (let i = 0; i < 200 && emulator.jobs().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 200));
    await emulator.flush();
    await emulator.close();

    const res = await responded;
    assert.equal(res.status, 502, JSON.stringify(res.body));
    assert.equal(res.body.error.code, 'upstream_unreachable');
    assert.equal(res.headers['x-should-retry'], 'false');
    const id = res.headers['x-request-id'] as string;
    const answered = await t.service.ledger.getRequest(id);
    assert.deepEqual([answered?.status, answered?.chargeMicros], ['failed', 0n], 'answered with an error: closed uncharged');
    assert.equal(answered?.jobs[0]?.status, 'submitted', 'the job is left open, not closed blind');

    emulator = await startEmulator({ port, latencyMs: 1500, stateFile, stateDebounceMs: 0 });
    cleanup.push(() => emulator.close());
    for (let i = 0; i < 400 && emulator.billing().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const report = await t.service.reconciler.run({ olderThanMs: 0 });
    assert.deepEqual(report.jobsClosed, [answered!.jobs[0]!.id]);
    const row = await t.service.ledger.getRequest(id);
    assert.equal(row?.status, 'failed');
    assert.equal(row?.jobs[0]?.status, 'completed');
    assert.equal(row?.upstreamCostMicros, parseUsd(emulator.billing()[0]!.usd), 'fal’s bill is upstream cost, unrecovered');
    assert.equal(row?.chargeMicros, 0n);
  });
});
