import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tsEntry } from './helpers/entry.js';

/**
 * Guards the departure in src/optimize-for-size.ts: the memory mode must keep
 * reclaiming promoted garbage (its old generation committed about a
 * quarter to a third of the default's on this workload, 34–40 MB against 128–129 MB), and the process entry must set it.
 */

const run = promisify(execFile);
const root = new URL('../', import.meta.url).pathname;
const FIXTURE = tsEntry(new URL('./fixtures/promoted-garbage.ts', import.meta.url));

async function oldGeneration(mode: boolean): Promise<{ oldCommitted: number }> {
  const { stdout } = await run(process.execPath, [...FIXTURE.execArgv, FIXTURE.file, ...(mode ? ['--mode'] : [])], { cwd: root, timeout: 120_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

describe('optimize-for-size', () => {
  it('keeps the old generation at under half its size on the defaults', async () => {
    const off = await oldGeneration(false);
    const on = await oldGeneration(true);
    assert.ok(on.oldCommitted * 2 < off.oldCommitted, `old generation committed: ${on.oldCommitted} B in the mode, ${off.oldCommitted} B on the defaults`);
  });

  it("is set by the process entry, unless HEAP_OPTIMIZE_FOR_SIZE is false, before the service starts", async () => {
    const main = await readFile(new URL('../src/main.ts', import.meta.url), 'utf8');
    const body = main.slice(main.indexOf('export async function runServer'));
    assert.ok(body.indexOf('if (config.heapOptimizeForSize) optimizeForSize()') >= 0 && body.indexOf('optimizeForSize()') < body.indexOf('startService('), 'runServer calls optimizeForSize() before startService(), when the setting is on');
  });
});
