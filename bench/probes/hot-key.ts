import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { sql } from 'kysely';
import { createDatabase, type Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { createLedger, jobIdFor, type Ledger } from '../../src/metering/ledger.js';
import { readCpuMs } from '../lib/procfs.js';
import { summarize } from '../lib/stats.js';

/**
 * Issue 22's spike: one hot API key against sixteen on PostgreSQL, for each
 * way a request's hold can be funded (docs/LEDGER-COST.md), with the
 * ledger alone (no HTTP, no fal): the three writes of an image request
 * (reserve, recordSubmit, settleJobs) with a pause for the job between them.
 *
 *   npx tsx bench/probes/hot-key.ts [--concurrency=64] [--duration=S] [--gap=MS]
 *       [--database-url=postgres://postgres@127.0.0.1:5432/test]
 *
 * Modes, all in one run so a shared machine's drift lands on each alike:
 * - `none`: keys without a budget (INSERT … SELECT, no shared row);
 * - `key row`: keys with a budget held on the key row (what SQLite does,
 *   and what every key did on PostgreSQL before migration 0006);
 * - `slices`: keys with a budget held from per-process budget slices.
 *
 * PostgreSQL CPU is that of this probe's own server backends only (found by
 * application_name in pg_stat_activity, read from /proc), so other clients
 * of the same server do not count; background writers are left out.
 */

const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '64' },
    duration: { type: 'string', default: '5' },
    gap: { type: 'string', default: '20' },
    'database-url': { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
  },
});

const appName = `hot_key_${process.pid}`;
const url = new URL(values['database-url']);
url.searchParams.set('application_name', appName);

async function backendCpuMs(database: Database): Promise<number> {
  const rows = await sql<{ pid: number }>`select pid from pg_stat_activity where application_name = ${appName}`.execute(database.db);
  return rows.rows.reduce((s, r) => {
    try {
      return s + readCpuMs(Number(r.pid));
    } catch {
      return s;
    }
  }, 0);
}

async function lifecycle(ledger: Ledger, keyId: string, gapMs: number): Promise<boolean> {
  const requestId = `req_${randomUUID().replace(/-/g, '')}`;
  const r = await ledger.reserve({ requestId, keyId, model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', maxChargeMicros: 5000n, pricing: '{"promptExpansion":false,"markup":"1.0"}', jobs: 1 });
  if (!r.ok) return false;
  await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: randomUUID() });
  await new Promise((res) => setTimeout(res, gapMs));
  await ledger.settleJobs({
    jobs: [{ jobId: jobIdFor(requestId, 0), images: 1, pixels: 1024 * 1024, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5000n }],
    settle: { requestId, chargeMicros: 5000n, credits: 10_000n, images: 1 },
  });
  return true;
}

async function measure(mode: 'none' | 'key row' | 'slices', keys: number): Promise<string> {
  const schema = `bench_hot_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
  const database = await createDatabase({ dataDir: '/tmp', databaseUrl: url.toString(), schema, poolSize: 10 });
  try {
    const leaseId = randomUUID();
    await createLeaseStore(database).acquire({ id: leaseId, host: 'bench', pid: process.pid, expiryMs: 600_000 });
    const ledger = createLedger(database, { leaseId, budgetSlices: mode === 'slices' });
    const store = createKeysStore(database);
    const ids = await Promise.all(Array.from({ length: keys }, async (_, i) => (await store.create({ name: `k${i}`, budgetMicros: mode === 'none' ? null : 10n ** 15n })).record.id));
    const gap = Number(values.gap);
    let next = 0;
    const latencies: number[] = [];
    const run = async (stopAt: number, record: boolean) => {
      while (performance.now() < stopAt) {
        const t = performance.now();
        if (!(await lifecycle(ledger, ids[next++ % keys]!, gap))) throw new Error('refused');
        if (record) latencies.push(performance.now() - t - gap);
      }
    };
    const c = Number(values.concurrency);
    await Promise.all(Array.from({ length: c }, () => run(performance.now() + 1000, false)));
    const cpu0 = await backendCpuMs(database);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: c }, () => run(t0 + Number(values.duration) * 1000, true)));
    const wall = performance.now() - t0;
    const cpu = (await backendCpuMs(database)) - cpu0;
    const n = latencies.length;
    const s = summarize(latencies);
    return `| ${mode} | ${keys} | ${c} | ${Math.round((n / wall) * 1000)} | ${s.p50.toFixed(1)} | ${s.p99.toFixed(1)} | ${(cpu / n).toFixed(2)} |`;
  } finally {
    await sql.raw(`drop schema if exists "${schema}" cascade`).execute(database.db);
    await database.close();
  }
}

console.log('| funded by | API keys | concurrency | requests/s | three writes p50 ms | p99 ms | PostgreSQL backend CPU ms/request |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const mode of ['none', 'key row', 'slices'] as const) {
  for (const keys of [1, 16]) console.log(await measure(mode, keys));
}
