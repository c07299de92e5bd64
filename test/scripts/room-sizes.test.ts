/**
 * The size rule of the house (docs/ARCHITECTURE.md, scripts/room-sizes.mjs):
 * no `src` file over 400 lines and no function over 80, tables and schemas
 * aside. The script is run as CI and a maintainer run it; a tree made for the
 * test shows that it does find each kind of breach and honours the
 * `size: table` exemption, so a passing check is not an empty one.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

// The checkout, also when this file runs from the compiled test mirror
// (scripts/test-build.mjs): the mirror's files are links to the checkout's,
// and the scripts measure the checkout's sources, not the mirror's output.
const ROOT = dirname(realpathSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json')));
const SCRIPT = join(ROOT, 'scripts', 'room-sizes.mjs');

interface Breach {
  path: string;
  line: number;
  what: string;
  lines: number;
}

/** The script's breaches as JSON and its exit code (1 when there is any). */
async function roomSizes(root?: string): Promise<{ code: number; found: Breach[] }> {
  const args = [SCRIPT, '--json', ...(root ? [`--root=${root}`] : [])];
  try {
    const { stdout } = await promisify(execFile)(process.execPath, args);
    return { code: 0, found: JSON.parse(stdout) as Breach[] };
  } catch (err) {
    const e = err as { code?: number; stdout?: string };
    if (e.code !== 1 || e.stdout === undefined) throw err;
    return { code: 1, found: JSON.parse(e.stdout) as Breach[] };
  }
}

/** A function of `n` lines in all: its signature, n - 2 statements, its closing brace. */
function fn(name: string, n: number): string {
  return [`export function ${name}(): number {`, '  let x = 0;', ...Array.from({ length: n - 4 }, () => '  x += 1;'), '  return x;', '}'].join('\n');
}

describe('room sizes', () => {
  it('no src file is over 400 lines and no function over 80', async () => {
    const { code, found } = await roomSizes();
    assert.deepEqual(
      found.map((b) => `${b.path}:${b.line}  ${b.what}  ${b.lines} lines`),
      [],
      'split these into smaller files or functions (or mark a table or schema `size: table` with its reason)',
    );
    assert.equal(code, 0);
  });

  it('finds a long file and a long function, and passes what is at the limit or marked as a table', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'room-sizes-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    mkdirSync(join(dir, 'src', 'room'), { recursive: true });
    const write = (path: string, text: string): void => writeFileSync(join(dir, 'src', path), `${text}\n`);
    write('room/long-function.ts', fn('tooLong', 81));
    write('room/at-limit.ts', fn('atLimit', 80));
    write('room/table.ts', `// size: table, one row per case reads best in one piece\n${fn('table', 120)}`);
    write('long-file.ts', Array.from({ length: 401 }, (_, i) => `export const c${i} = ${i};`).join('\n'));
    write('at-limit-file.ts', Array.from({ length: 400 }, (_, i) => `export const c${i} = ${i};`).join('\n'));

    const { code, found } = await roomSizes(dir);
    assert.equal(code, 1);
    assert.deepEqual(found, [
      { path: 'src/long-file.ts', line: 1, what: 'file', lines: 401 },
      { path: 'src/room/long-function.ts', line: 1, what: 'function tooLong', lines: 81 },
    ]);
  });
});
