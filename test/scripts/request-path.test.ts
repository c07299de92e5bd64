/**
 * The counted path (docs/ARCHITECTURE.md, "The counted path"): the listing in
 * the docs is the script's output on this tree, and the path is at most
 * MAX_MODULES long.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

// The checkout, also when this file runs from the compiled test mirror
// (scripts/test-build.mjs): the mirror's files are links to the checkout's,
// and the scripts measure the checkout's sources, not the mirror's output.
const ROOT = dirname(realpathSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json')));
const COMMAND = 'node scripts/request-path.mjs';
const LIMIT = 12;

/** The script's listing (it exits 1 when the path is over the limit, with the same listing). */
async function listing(): Promise<string> {
  try {
    return (await promisify(execFile)(process.execPath, [join(ROOT, 'scripts', 'request-path.mjs')])).stdout;
  } catch (err) {
    const e = err as { code?: number; stdout?: string };
    if (e.code !== 1 || e.stdout === undefined) throw err;
    return e.stdout;
  }
}

/** The fenced block of docs/ARCHITECTURE.md that starts with `$ <COMMAND>`, without that line. */
function documented(): string {
  const doc = readFileSync(join(ROOT, 'docs', 'ARCHITECTURE.md'), 'utf8');
  const block = new RegExp('```\\n\\$ ' + COMMAND.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '\\n([\\s\\S]*?)```').exec(doc);
  assert.ok(block, `docs/ARCHITECTURE.md has a code block starting with "$ ${COMMAND}"`);
  return block[1]!;
}

const count = (text: string): number => Number(/^(\d+) modules/.exec(text)?.[1]);

describe('the counted path of one image request', () => {
  it("docs/ARCHITECTURE.md lists the script's output", async () => {
    assert.equal(documented(), await listing(), `rerun ${COMMAND} and paste its output into docs/ARCHITECTURE.md`);
  });

  it(`is at most ${LIMIT} modules`, async () => {
    const text = await listing();
    assert.ok(count(text) <= LIMIT, `${count(text)} modules on the path:\n${text}`);
  });
});
