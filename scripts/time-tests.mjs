#!/usr/bin/env node
// Times each test file on its own (one `node --test` process per file, one
// file at a time), so the figures that decide the tiers in docs/TESTING.md
// are not skewed by files running beside each other.
// Usage: node scripts/time-tests.mjs [path-substring ...]
// Prints one line per file, slowest first: seconds, exit status, tier, path.
import { spawnSync } from 'node:child_process';
import { findTestFiles, tierOf, root } from './test-files.mjs';

const files = findTestFiles(process.argv.slice(2));
if (files.length === 0) {
  console.error('time-tests: no test files matched', process.argv.slice(2));
  process.exit(1);
}
const rows = [];
for (const file of files) {
  const started = process.hrtime.bigint();
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=dot', file], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  rows.push({ file, seconds, status: r.status ?? 1, tier: tierOf(file) });
  console.error(`${seconds.toFixed(1).padStart(6)} s  ${r.status === 0 ? 'ok  ' : 'FAIL'}  ${file}`);
}
rows.sort((a, b) => b.seconds - a.seconds);
console.log('\nseconds  status  tier         file');
for (const r of rows) console.log(`${r.seconds.toFixed(1).padStart(7)}  ${String(r.status).padStart(6)}  ${r.tier.padEnd(11)}  ${r.file}`);
const total = rows.reduce((s, r) => s + r.seconds, 0);
console.log(`${total.toFixed(1).padStart(7)}  total (${rows.length} files, run one at a time)`);
process.exit(rows.some((r) => r.status !== 0) ? 1 : 0);
