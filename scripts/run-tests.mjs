#!/usr/bin/env node
// Node 20's test runner neither expands globs nor picks up .ts files, so we
// find the test files ourselves, compile the checkout's TypeScript once
// (scripts/test-build.mjs) and hand the compiled files to `node --test`.
// Usage: node scripts/run-tests.mjs [--tier=fast|integration] [path-substring ...]
//   no --tier: every test file matching the substrings, both tiers;
//   --tier=fast: `npm test`'s files; --tier=integration: the slow suites.
//   TEST_LOADER=tsx runs the .ts files through tsx's loader instead (no build).
// The tiers are listed in scripts/test-files.mjs and explained in docs/TESTING.md.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { findTestFiles, longestFirst, missingListedPaths, root, TIERS } from './test-files.mjs';
import { buildTestTree, compiledPath } from './test-build.mjs';

const args = process.argv.slice(2);
const tierArg = args.find((a) => a.startsWith('--tier='));
const tier = tierArg?.slice('--tier='.length);
const filters = args.filter((a) => a !== tierArg);
if (tier !== undefined && !TIERS.includes(tier)) {
  console.error(`run-tests: unknown tier ${JSON.stringify(tier)}; expected one of ${TIERS.join(', ')}`);
  process.exit(2);
}
const missing = missingListedPaths();
if (missing.length > 0) {
  console.error(`run-tests: scripts/test-files.mjs lists files that do not exist: ${missing.join(', ')}`);
  process.exit(2);
}

const files = longestFirst(findTestFiles(filters, tier));
if (files.length === 0) {
  console.error('run-tests: no test files matched', filters, tier ? `in the ${tier} tier` : '');
  process.exit(1);
}
const viaTsx = process.env.TEST_LOADER === 'tsx';
const build = viaTsx ? undefined : buildTestTree();
// Source maps on, as tsx turns them on: stack traces name the .ts lines.
const nodeArgs = viaTsx ? ['--import', 'tsx'] : ['--enable-source-maps'];
// Most test files spend their time waiting on servers and child processes, so
// two files at a time (TEST_CONCURRENCY, read by run-test-files.mjs) roughly
// halves the wall time on a 2-core machine; Node's default is cores - 1.
const paths = build ? files.map((f) => join(build.dir, compiledPath(f))) : files;
const runner = join(root, 'scripts/run-test-files.mjs');
const child = spawn(process.execPath, [...nodeArgs, runner, ...paths], { cwd: root, stdio: 'inherit' });
// Ctrl-C reaches the test runner too (same process group); the build goes once it has exited.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal));
child.on('exit', (code, signal) => {
  build?.remove();
  process.exit(signal ? 1 : (code ?? 1));
});
