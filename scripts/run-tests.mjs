#!/usr/bin/env node
// Node 20's test runner neither expands globs nor picks up .ts files, so we
// find the test files ourselves and hand them to `node --test` with tsx loaded.
// Usage: node scripts/run-tests.mjs [--tier=fast|integration] [path-substring ...]
//   no --tier: every test file matching the substrings, both tiers;
//   --tier=fast: `npm test`'s files; --tier=integration: the slow suites.
// The tiers are listed in scripts/test-files.mjs and explained in docs/TESTING.md.
import { spawn } from 'node:child_process';
import { findTestFiles, missingIntegrationPaths, root, TIERS } from './test-files.mjs';

const args = process.argv.slice(2);
const tierArg = args.find((a) => a.startsWith('--tier='));
const tier = tierArg?.slice('--tier='.length);
const filters = args.filter((a) => a !== tierArg);
if (tier !== undefined && !TIERS.includes(tier)) {
  console.error(`run-tests: unknown tier ${JSON.stringify(tier)}; expected one of ${TIERS.join(', ')}`);
  process.exit(2);
}
const missing = missingIntegrationPaths();
if (missing.length > 0) {
  console.error(`run-tests: scripts/test-files.mjs lists integration files that do not exist: ${missing.join(', ')}`);
  process.exit(2);
}

const files = findTestFiles(filters, tier);
if (files.length === 0) {
  console.error('run-tests: no test files matched', filters, tier ? `in the ${tier} tier` : '');
  process.exit(1);
}
const nodeArgs = ['--import', 'tsx', '--test', '--test-reporter=spec'];
// Most test files spend their time waiting on servers and child processes, so
// two files at a time roughly halves the wall time on a 2-core machine
// (Node's default is cores - 1 = one file at a time).
nodeArgs.push(`--test-concurrency=${process.env.TEST_CONCURRENCY ?? '2'}`);
const child = spawn(process.execPath, [...nodeArgs, ...files], { cwd: root, stdio: 'inherit' });
child.on('exit', (code, signal) => process.exit(signal ? 1 : (code ?? 1)));
