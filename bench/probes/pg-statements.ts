/**
 * What one image request costs PostgreSQL, statement by statement
 * (docs/LEDGER-COST.md): one service process on PostgreSQL and Redis in
 * front of the standalone emulator, with every statement it sends counted
 * by text inside the process (pg-statements-preload.mjs), and the CPU of its
 * own server backends (by application_name, from /proc) and of every
 * postgres process on the host, over exactly N requests.
 *
 *   npx tsx bench/probes/pg-statements.ts [--keys=1,16] [--budgeted] [--requests=600]
 *       [--concurrency=64] [--latency=20] [--pg=postgres://postgres@127.0.0.1:5432/test]
 *
 * Keys are static keys without a budget, or with --budgeted keys issued
 * through the admin API with a budget no run can reach, so the budget-slice
 * path is taken (src/metering/budget-slices.ts). Statements outside the
 * request path (lease renewal, reconciliation rounds) are counted when they
 * fall inside the window, as their share of the requests.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { keepAliveAgent, post } from '../lib/http-client.js';
import { readAllCpu, cpuDeltas, readCpuMs } from '../lib/procfs.js';
import { BENCH_FAL_CONCURRENCY, startEmulatorProcess, startServiceProcess, type NodeChild } from '../lib/procs.js';
import { BENCH_KEY, clearRedisPrefix, imageBody, issueKeys, pgSchema, serviceEnv, sleep, tempDir, timeBudget } from '../lib/scale.js';

const { values: args } = parseArgs({
  options: {
    keys: { type: 'string', default: '1,16' },
    budgeted: { type: 'boolean', default: false },
    requests: { type: 'string', default: '600' },
    concurrency: { type: 'string', default: '64' },
    latency: { type: 'string', default: '20' },
    pg: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
  },
  strict: true,
});

const cells = args.keys.split(',').map(Number);
const requests = Number(args.requests);
const concurrency = Number(args.concurrency);
const ADMIN = 'sk-bench-admin-0123456789abcdef';
const PRELOAD = join(fileURLToPath(new URL('.', import.meta.url)), 'pg-statements-preload.mjs');
timeBudget(10 * 60_000, 'bench/probes/pg-statements.ts');

interface Snapshot {
  at: number;
  backends: number[];
  statements: Array<{ text: string; calls: number; ms: number; errors: number; named: number }>;
}

/** The preload's totals as written after `after` (ms since epoch). */
async function snapshot(file: string, after: number): Promise<Snapshot> {
  for (;;) {
    try {
      const s = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
      if (s.at > after) return s;
    } catch {
      // Not written yet.
    }
    await sleep(20);
  }
}

function backendCpu(pids: readonly number[]): number {
  return pids.reduce((s, pid) => {
    try {
      return s + readCpuMs(pid);
    } catch {
      return s;
    }
  }, 0);
}

async function burst(url: string, keys: readonly string[], n: number): Promise<number> {
  const agent = keepAliveAgent();
  const body = imageBody();
  let sent = 0;
  let failed = 0;
  const worker = async () => {
    while (sent < n) {
      const key = keys[sent++ % keys.length]!;
      const r = await post(`${url}/v1/images/generations`, body, { agent, headers: { authorization: `Bearer ${key}` }, timeoutMs: 60_000 });
      if (r.status !== 200) failed++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  agent.destroy();
  return failed;
}

function shorten(text: string): string {
  return text.replace(/\s+/g, ' ').replace(/"/g, '').slice(0, 150);
}

async function main(): Promise<void> {
  const dir = await tempDir('gw-pgstat-');
  const schema = await pgSchema(args.pg, 'bench_pgstat');
  const appName = `pgstat_${process.pid}`;
  const prefix = `bench-pgstat-${process.pid}`;
  const file = join(dir.path, 'statements.json');
  const maxKeys = Math.max(...cells);
  const staticKeys = Array.from({ length: maxKeys }, (_, i) => (i === 0 ? BENCH_KEY : `${BENCH_KEY}-${i}`));
  const children: NodeChild[] = [];
  try {
    const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: args.latency, EMULATOR_IMAGE_MODE: 'cheap', EMULATOR_CONCURRENCY: BENCH_FAL_CONCURRENCY });
    children.push(emu);
    const env = serviceEnv(emu.url, join(dir.path, 'data'), {
      DATABASE_URL: `${schema.url}&application_name=${appName}`,
      API_KEYS: staticKeys.join(','),
      ADMIN_API_KEY: ADMIN,
      REDIS_URL: args.redis,
      REDIS_KEY_PREFIX: prefix,
      DEFAULT_RPM_LIMIT: '1000000',
      PG_STATEMENTS_FILE: file,
    });
    const svc = await startServiceProcess(dir.path, env, 'service', ['--import', PRELOAD]);
    children.push(svc);
    const keys = args.budgeted ? await issueKeys(svc.url, ADMIN, maxKeys, '1000000.000000') : staticKeys;
    for (const k of cells) {
      const use = keys.slice(0, k);
      await burst(svc.url, use, Math.min(200, requests));
      await sleep(300);
      const s0 = await snapshot(file, Date.now());
      const own0 = backendCpu(s0.backends);
      const all0 = readAllCpu();
      const svc0 = readCpuMs(svc.pid);
      const t0 = performance.now();
      const failed = await burst(svc.url, use, requests);
      const wall = performance.now() - t0;
      const svcMs = readCpuMs(svc.pid) - svc0;
      const allMs = cpuDeltas(all0, readAllCpu()).filter((d) => d.comm === 'postgres').reduce((x, d) => x + d.ms, 0);
      const s1 = await snapshot(file, Date.now());
      const ownMs = backendCpu(s1.backends) - own0;
      const before = new Map(s0.statements.map((s) => [s.text, s]));
      const rows = s1.statements
        .map((s) => {
          const b = before.get(s.text);
          const calls = s.calls - (b?.calls ?? 0);
          return { text: s.text, calls, ms: s.ms - (b?.ms ?? 0), named: s.named - (b?.named ?? 0) };
        })
        .filter((r) => r.calls > 0)
        .sort((x, y) => y.calls - x.calls);
      const total = rows.reduce((x, r) => x + r.calls, 0);
      console.log(`\n## ${k} key(s)${args.budgeted ? ', budgeted' : ''}: ${requests} requests at c=${concurrency}, ${Math.round((requests / wall) * 1000)} req/s, ${failed} failed`);
      console.log(`round trips per request: ${(total / requests).toFixed(2)}; own backends' CPU ${(ownMs / requests).toFixed(2)} ms/request; every postgres process ${(allMs / requests).toFixed(2)} ms/request; service ${(svcMs / requests).toFixed(2)} ms/request\n`);
      console.log('| per request | calls | named | mean ms (client) | statement |\n| --- | --- | --- | --- | --- |');
      for (const r of rows) console.log(`| ${(r.calls / requests).toFixed(3)} | ${r.calls} | ${r.named} | ${(r.ms / r.calls).toFixed(2)} | \`${shorten(r.text)}\` |`);
    }
  } finally {
    for (const c of children.reverse()) await c.stop(15_000);
    await schema.drop();
    await clearRedisPrefix(args.redis, prefix);
    await dir.remove();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
