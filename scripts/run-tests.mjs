#!/usr/bin/env node
// Node 20's test runner neither expands globs nor picks up .ts files, so we
// find the test files ourselves and hand them to `node --test` with tsx loaded.
// Usage: node scripts/run-tests.mjs [path-substring ...]
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawn } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const filters = process.argv.slice(2);

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (/\.test\.ts$/.test(name)) out.push(p);
  }
  return out;
}

const files = walk(join(root, 'test'))
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error('run-tests: no test files matched', filters);
  process.exit(1);
}
const args = ['--import', 'tsx', '--test', '--test-reporter=spec'];
// Most test files spend their time waiting on servers and child processes, so
// two files at a time roughly halves the wall time on a 2-core machine
// (Node's default is cores - 1 = one file at a time).
args.push(`--test-concurrency=${process.env.TEST_CONCURRENCY ?? '2'}`);
const child = spawn(process.execPath, [...args, ...files], { cwd: root, stdio: 'inherit' });
child.on('exit', (code, signal) => process.exit(signal ? 1 : (code ?? 1)));
