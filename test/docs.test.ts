import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The README is the door and docs/ the rooms: the README stays small and
 * holds the commands CI runs, every link between the pages reaches a file
 * and a heading that exist, and every environment variable the service
 * reads is documented.
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const README = join(ROOT, 'README.md');
const PAGES = [README, ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join(ROOT, 'docs', f))];
const README_MAX_BYTES = 10_240;

/** The page without its fenced code blocks, whose brackets are code, not links. */
function prose(text: string): string {
  return text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens, repeats numbered. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const [, heading] of prose(text).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = heading!.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

function links(text: string): string[] {
  return [...prose(text).matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/i.test(l));
}

describe('README.md', () => {
  const text = readFileSync(README, 'utf8');

  it(`is at most ${README_MAX_BYTES} bytes`, () => {
    assert.ok(Buffer.byteLength(text) <= README_MAX_BYTES, `README.md is ${Buffer.byteLength(text)} bytes: move detail to docs/`);
  });

  it('starts the service on its embedded defaults with one command', () => {
    assert.match(text, /```sh\nnpm ci && npm start\n```/);
  });

  it("gives the test commands .ci/run runs, both tiers", () => {
    const ci = readFileSync(join(ROOT, '.ci/run'), 'utf8').split('\n');
    const block = /```sh\n(npm ci && npm test[^\n]*\nnpm run test:integration[^\n]*)\n```/.exec(text);
    assert.ok(block, 'the README has the two-tier test block');
    const commands = block[1]!.split('\n').flatMap((l) => l.replace(/#.*/, '').split('&&')).map((c) => c.trim());
    assert.deepEqual(commands, ['npm ci', 'npm test', 'npm run test:integration']);
    for (const c of commands) assert.ok(ci.includes(c), `.ci/run runs "${c}" on a line of its own`);
  });
});

describe('links between README.md and docs/', () => {
  for (const page of PAGES) {
    it(`${relative(ROOT, page)}: every relative link reaches a file, and a heading there`, () => {
      const broken: string[] = [];
      for (const link of links(readFileSync(page, 'utf8'))) {
        const [path, anchor] = link.split('#') as [string, string | undefined];
        const target = path === '' ? page : join(dirname(page), path);
        if (!existsSync(target)) {
          broken.push(`${link}: no file ${relative(ROOT, target)}`);
          continue;
        }
        if (anchor !== undefined && target.endsWith('.md') && !anchors(readFileSync(target, 'utf8')).has(anchor)) {
          broken.push(`${link}: no heading #${anchor} in ${relative(ROOT, target)}`);
        }
      }
      assert.deepEqual(broken, []);
    });
  }
});

describe('docs/CONFIGURATION.md', () => {
  it('documents every environment variable src/config.ts reads', () => {
    const config = readFileSync(join(ROOT, 'src/config.ts'), 'utf8');
    const doc = readFileSync(join(ROOT, 'docs/CONFIGURATION.md'), 'utf8');
    const names = [...new Set([...config.matchAll(/\b[a-z][A-Za-z]*\('([A-Z][A-Z0-9_]+)'/g)].map((m) => m[1]!))];
    assert.ok(names.length > 40, `found only ${names.length} variables in src/config.ts`);
    assert.deepEqual(names.filter((n) => !doc.includes(`\`${n}\``)), []);
  });
});
