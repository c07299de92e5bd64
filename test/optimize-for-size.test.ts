import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tsEntry } from './helpers/entry.js';
import { heapModeByLoad } from '../src/optimize-for-size.js';

/**
 * Guards the departure in src/optimize-for-size.ts: the memory mode must keep
 * reclaiming promoted garbage (its old generation committed about a
 * quarter to a third of the default's on this workload, 34–40 MB against 128–129 MB),
 * clearing it must give the CPU back (the defaults' growth), and the process entry must apply it.
 */

const run = promisify(execFile);
const root = new URL('../', import.meta.url).pathname;
const FIXTURE = tsEntry(new URL('./fixtures/promoted-garbage.ts', import.meta.url));

async function oldGeneration(mode: 'defaults' | 'mode' | 'mode-then-off'): Promise<{ oldCommitted: number }> {
  const { stdout } = await run(process.execPath, [...FIXTURE.execArgv, FIXTURE.file, ...(mode === 'defaults' ? [] : [`--${mode}`])], { cwd: root, timeout: 120_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

describe('optimize-for-size', () => {
  it('keeps the old generation at under half its size on the defaults, and cleared again grows as on the defaults', async () => {
    const off = await oldGeneration('defaults');
    const on = await oldGeneration('mode');
    const onThenOff = await oldGeneration('mode-then-off');
    assert.ok(on.oldCommitted * 2 < off.oldCommitted, `old generation committed: ${on.oldCommitted} B in the mode, ${off.oldCommitted} B on the defaults`);
    assert.ok(on.oldCommitted * 2 < onThenOff.oldCommitted, `old generation committed: ${on.oldCommitted} B in the mode, ${onThenOff.oldCommitted} B set and cleared`);
  });

  it('auto: on from `from` requests in progress, off only below half of it', () => {
    let n = 0;
    const set: boolean[] = [];
    const mode = heapModeByLoad({ inProgress: () => n, from: 1_000, intervalMs: 3_600_000, setMode: (on) => set.push(on) });
    try {
      for (const [load, expected] of [
        [0, false],
        [999, false],
        [1_000, true],
        [600, true],
        [500, true],
        [499, false],
        [999, false],
        [5_000, true],
      ] as const) {
        n = load;
        mode.check();
        assert.equal(mode.on, expected, `at ${load} in progress`);
      }
      assert.deepEqual(set, [true, false, true], 'the flag is set only when the mode changes');
    } finally {
      mode.stop();
    }
  });

  it('is set by the process entry: from the start when HEAP_OPTIMIZE_FOR_SIZE is true, by load when auto', async () => {
    const main = await readFile(new URL('../src/main.ts', import.meta.url), 'utf8');
    const body = main.slice(main.indexOf('export async function runServer'));
    assert.ok(body.indexOf("if (config.heapOptimizeForSize === true) optimizeForSize()") >= 0 && body.indexOf('optimizeForSize()') < body.indexOf('startService('), 'runServer calls optimizeForSize() before startService(), when the setting is true');
    assert.match(body, /config\.heapOptimizeForSize === 'auto'[\s\S]*heapModeByLoad\(\{ inProgress: \(\) => server\.requestsInProgress, from: config\.heapOptimizeForSizeFrom \}\)/);
  });
});
