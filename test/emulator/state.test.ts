import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmulator } from '../../src/emulator/index.js';
import { falClient, raw, rawSubmit, TURBO, waitFor } from './helpers.js';

describe('state file', () => {
  test('jobs, billing and the webhook key survive a restart; an in-flight job completes afterwards', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'fal-emulator-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const stateFile = join(dir, 'nested', 'state.json');

    const first = await startEmulator({ port: 0, latencyMs: 20, stateFile, imageMode: 'cheap' });
    let closedFirst = false;
    t.after(async () => {
      if (!closedFirst) await first.close();
    });
    const done = await falClient(first).subscribe(TURBO, { input: { prompt: 'before restart' }, pollInterval: 20 });
    first.armFault([
      { kind: 'latency', latency_ms: 3000, prompt_contains: 'in flight' },
      { kind: 'never_finish', prompt_contains: 'stuck' },
    ]);
    const inflight = await rawSubmit(first, TURBO, { prompt: 'in flight' });
    const stuck = await rawSubmit(first, TURBO, { prompt: 'stuck' });
    const jwks = first.jwks();
    const billingBefore = first.billing();
    assert.equal(billingBefore.length, 1);
    await first.close();
    closedFirst = true;
    const saved = JSON.parse(readFileSync(stateFile, 'utf8'));
    assert.equal(saved.version, 1);
    assert.equal(saved.jobs.length, 3);

    const second = await startEmulator({ port: 0, latencyMs: 20, stateFile, imageMode: 'cheap' });
    t.after(() => second.close());
    assert.deepEqual(second.billing(), billingBefore);
    assert.deepEqual(second.jwks(), jwks);
    const fal = falClient(second);
    const again = await fal.queue.result(TURBO, { requestId: done.requestId });
    assert.deepEqual(
      (again.data as any).images.map((i: any) => new URL(i.url).pathname),
      (done.data as any).images.map((i: any) => new URL(i.url).pathname),
    );
    assert.notEqual(second.job(inflight)!.status, 'COMPLETED');
    await waitFor(() => (second.job(inflight)!.status === 'COMPLETED' ? true : undefined), 10000);
    const result = await fal.queue.result(TURBO, { requestId: inflight });
    assert.equal((result.data as any).images.length, 1);
    assert.equal(second.billing().length, 2);
    const s = await raw(second, 'GET', `queue.fal.run/fal-ai/z-image/requests/${stuck}/status`);
    assert.equal(s.json.status, 'IN_PROGRESS');

    await second.flush();
    const after = JSON.parse(readFileSync(stateFile, 'utf8'));
    assert.equal(after.billing.length, 2);
  });

  test('reset clears what is persisted', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'fal-emulator-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const stateFile = join(dir, 'state.json');
    const emu = await startEmulator({ port: 0, latencyMs: 10, stateFile, imageMode: 'cheap' });
    t.after(() => emu.close());
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    await waitFor(() => (emu.job(id)?.status === 'COMPLETED' ? true : undefined));
    emu.reset();
    await emu.flush();
    const saved = JSON.parse(readFileSync(stateFile, 'utf8'));
    assert.deepEqual(saved.jobs, []);
    assert.deepEqual(saved.billing, []);
  });
});
