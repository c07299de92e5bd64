// Which test files exist, and which tier each belongs to. Shared by
// run-tests.mjs and time-tests.mjs. The tiers are explained, with the
// figures that put each slow file where it is, in docs/TESTING.md.
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export const root = new URL('..', import.meta.url).pathname;

/**
 * The integration tier: files that take more than about 20 s on their own, or
 * need several processes, both databases at length, Chromium or a long fuzz
 * run. Listed by path (matched as a path prefix) rather than moved, so the
 * files keep their place beside the tests of the same src module. Every file
 * not listed here is in the fast tier (`npm test`).
 */
export const integration = [];

export function tierOf(file) {
  return integration.some((p) => file === p || file.startsWith(p.endsWith('/') ? p : `${p}`)) ? 'integration' : 'fast';
}

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (/\.test\.ts$/.test(name)) out.push(p);
  }
  return out;
}

/** Test files (paths relative to the repo root, sorted) matching any of the substrings; all when none. */
export function findTestFiles(filters = []) {
  return walk(join(root, 'test'))
    .map((f) => relative(root, f))
    .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
    .sort();
}
