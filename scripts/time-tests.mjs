#!/usr/bin/env node
// Times each test file on its own (one `node --test` process per file, one
// file at a time), so the figures that decide the tiers in docs/TESTING.md
// are not skewed by files running beside each other. Files run compiled, as
// scripts/run-tests.mjs runs them (TEST_LOADER=tsx: through tsx instead).
// Usage: node scripts/time-tests.mjs [--tier=fast|integration] [path-substring ...]
// Prints one line per file, slowest first: wall seconds, CPU seconds (user +
// system of the file's whole process tree, where Linux tells it), exit
// status, tier, path. CPU seconds say what a file costs on a busy machine,
// where wall time depends on what else is running.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findTestFiles, tierOf, root, TIERS } from './test-files.mjs';
import { buildTestTree, compiledPath } from './test-build.mjs';

const args = process.argv.slice(2);
const tierArg = args.find((a) => a.startsWith('--tier='));
const tier = tierArg?.slice('--tier='.length);
if (tier !== undefined && !TIERS.includes(tier)) {
  console.error(`time-tests: unknown tier ${JSON.stringify(tier)}; expected one of ${TIERS.join(', ')}`);
  process.exit(2);
}
const files = findTestFiles(args.filter((a) => a !== tierArg), tier);
if (files.length === 0) {
  console.error('time-tests: no test files matched', args);
  process.exit(1);
}
const build = process.env.TEST_LOADER === 'tsx' ? undefined : buildTestTree();
process.on('exit', () => build?.remove());
const nodeArgs = build ? ['--enable-source-maps', '--test', '--test-reporter=spec'] : ['--import', 'tsx', '--test', '--test-reporter=spec'];
/** User + system seconds of this process's waited-for descendants (Linux /proc), or NaN. */
function childrenCpuSeconds() {
  try {
    // Fields after the command name: cutime and cstime are the 14th and 15th (1-based, from state = 1).
    const after = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
    return (Number(after[13]) + Number(after[14])) / 100;
  } catch {
    return Number.NaN;
  }
}

// Each file's output is kept, so a failure seen once can be read afterwards.
const logs = mkdtempSync(join(tmpdir(), 'time-tests-'));
const rows = [];
for (const file of files) {
  const started = process.hrtime.bigint();
  const cpuBefore = childrenCpuSeconds();
  const r = spawnSync(process.execPath, [...nodeArgs, build ? join(build.dir, compiledPath(file)) : file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 * 1024 * 1024 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = childrenCpuSeconds() - cpuBefore;
  rows.push({ file, seconds, cpu, status: r.status ?? 1, tier: tierOf(file) });
  const log = join(logs, `${file.replaceAll('/', '_')}.log`);
  writeFileSync(log, Buffer.concat([r.stdout ?? Buffer.alloc(0), r.stderr ?? Buffer.alloc(0)]));
  console.error(`${seconds.toFixed(1).padStart(6)} s  ${cpu.toFixed(1).padStart(6)} cpu-s  ${r.status === 0 ? 'ok  ' : `FAIL (output: ${log})`}  ${file}`);
}
rows.sort((a, b) => b.seconds - a.seconds);
console.log('\n   wall      cpu  status  tier         file');
const fmt = (n) => n.toFixed(1).padStart(7);
for (const r of rows) console.log(`${fmt(r.seconds)}  ${fmt(r.cpu)}  ${String(r.status).padStart(6)}  ${r.tier.padEnd(11)}  ${r.file}`);
for (const tier of ['fast', 'integration']) {
  const of = rows.filter((r) => r.tier === tier);
  const sum = (k) => of.reduce((s, r) => s + r[k], 0);
  console.log(`${fmt(sum('seconds'))}  ${fmt(sum('cpu'))}  total of the ${tier} tier (${of.length} files, one at a time)`);
}
process.exit(rows.some((r) => r.status !== 0) ? 1 : 0);
