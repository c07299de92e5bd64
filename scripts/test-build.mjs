// The checkout's TypeScript compiled once per test run, so that test files
// run as plain JavaScript with no loader hooks.
//
// Why: `node --import tsx` registers module hooks, and on Node 20 every
// module a process loads (node_modules included) then makes a round trip
// to the hooks' thread. A test file that starts the service loads about a
// thousand modules; through the hooks that costs it about twice the CPU of
// loading them plainly, in every one of the runner's child processes.
//
// How: a temporary directory that mirrors the checkout, directory for
// directory. Each `x.ts` is compiled to `x.js` with the esbuild and the
// options tsx itself uses (so the code tested is the code `tsx` runs), and
// every file (the `.ts` sources included) is a symlink to the checkout's,
// so paths built from `import.meta.url` reach the same files, and a test that
// spawns `node --import tsx some.ts` runs the checkout's file. Directories are
// real, never links: a test that copies a folder and deletes from its copy
// (test/contract/openapi.test.ts does) deletes a link, not the checkout's file.
// node_modules is the one linked folder.
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { root } from './test-files.mjs';

// The esbuild tsx depends on, not one of our own: the transform stays the one tsx applies.
const esbuild = createRequire(createRequire(join(root, 'package.json')).resolve('tsx/package.json'))('esbuild');
const tsconfigRaw = readFileSync(join(root, 'tsconfig.json'), 'utf8');
/** tsx's own transform options (tsx/dist: target, keepNames, minifyWhitespace, source maps without sources). */
const TRANSFORM = {
  loader: 'ts',
  format: 'esm',
  target: `node${process.versions.node}`,
  keepNames: true,
  minifyWhitespace: true,
  sourcemap: 'inline',
  sourcesContent: false,
  tsconfigRaw,
};

function mirror(rel, out) {
  for (const name of readdirSync(join(root, rel))) {
    const r = join(rel, name);
    if (r === '.git') continue;
    const from = join(root, r);
    if (name !== 'node_modules' && statSync(from).isDirectory()) {
      mkdirSync(join(out, r));
      mirror(r, out);
      continue;
    }
    symlinkSync(from, join(out, r));
    if (!name.endsWith('.ts') || name.endsWith('.d.ts') || !statSync(from).isFile()) continue;
    const js = `${r.slice(0, -'.ts'.length)}.js`;
    if (existsSync(join(root, js))) throw new Error(`test-build: ${r} and ${js} would both be ${js}`);
    const { code } = esbuild.transformSync(readFileSync(from, 'utf8'), { ...TRANSFORM, sourcefile: from });
    writeFileSync(join(out, js), code);
  }
}

/**
 * Builds the mirror and returns its directory; `remove()` deletes it. A test
 * file's path relative to the checkout, ending in `.js`, is its compiled file.
 */
export function buildTestTree() {
  const dir = mkdtempSync(join(tmpdir(), 'gw-tests-'));
  try {
    mirror('', dir);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** `test/a/b.test.ts` → `test/a/b.test.js`: the compiled file the runner hands to `node --test`. */
export const compiledPath = (file) => file.replace(/\.ts$/, '.js');
