/**
 * PostgreSQL backend CPU of each of a request's ledger writes on its own
 * (reserve, recordSubmit, settleJobs), one connection, one request at a
 * time, so nothing but the statements themselves is measured
 * (docs/LEDGER-COST.md).
 *
 *   npx tsx bench/probes/ledger-phases.ts [--requests=2000] [--budgeted] [--plan-cache-mode=auto]
 *       [--database-url=postgres://postgres@127.0.0.1:5432/test]
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { sql } from 'kysely';
import { createDatabase } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { readCpuMs } from '../lib/procfs.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '2000' },
    budgeted: { type: 'boolean', default: false },
    /** PostgreSQL's plan_cache_mode for the session (auto, force_custom_plan, force_generic_plan). */
    'plan-cache-mode': { type: 'string', default: 'auto' },
    'database-url': { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
  },
});
const n = Number(values.requests);
const schema = `ledger_phases_${process.pid}`;
const database = await createDatabase({ databaseUrl: values['database-url'], dataDir: '/tmp', schema, poolSize: 1 });
try {
  const keys = createKeysStore(database);
  const leases = createLeaseStore(database);
  const lease = await leases.acquire({ id: `phases-${process.pid}`, host: 'probe', pid: process.pid, expiryMs: 600_000 });
  const ledger = createLedger(database, { leaseId: lease.id });
  const keyId = (await keys.create({ name: 'k', budgetMicros: values.budgeted ? 10n ** 15n : null })).record.id;
  const pid = Number((await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(database.db)).rows[0]!.pid);
  await sql`select set_config('plan_cache_mode', ${values['plan-cache-mode']}, false)`.execute(database.db);
  const spent = { reserve: 0, recordSubmit: 0, settleJobs: 0 };
  // Phase by phase over a batch of requests: /proc counts CPU in 10 ms ticks, too coarse for one statement.
  const batch = async (count: number) => {
    const ids = Array.from({ length: count }, () => `req_${randomUUID().replace(/-/g, '')}`);
    const phase = async (name: keyof typeof spent, f: (requestId: string) => Promise<unknown>) => {
      const a = readCpuMs(pid);
      for (const id of ids) await f(id);
      spent[name] += readCpuMs(pid) - a;
    };
    await phase('reserve', (requestId) => ledger.reserve({ requestId, keyId, model: 'm', endpoint: 'e', maxChargeMicros: 5000n, jobs: 1, inputHashes: ['h'], estimates: [1000n] }));
    await phase('recordSubmit', (requestId) => ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: randomUUID() }));
    await phase('settleJobs', (requestId) =>
      ledger.settleJobs({ jobs: [{ jobId: jobIdFor(requestId, 0), images: 1, pixels: 1_048_576, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 1000n }], settle: { requestId, chargeMicros: 4000n, credits: 4, images: 1 } }),
    );
  };
  await batch(200);
  for (const k of Object.keys(spent) as Array<keyof typeof spent>) spent[k] = 0;
  await batch(n);
  const per = (ms: number) => ((ms * 1000) / n).toFixed(0);
  console.log(`${values.budgeted ? 'budgeted' : 'unbudgeted'}, plan_cache_mode ${values['plan-cache-mode']}, ${n} requests, backend CPU µs/request: reserve ${per(spent.reserve)}, recordSubmit ${per(spent.recordSubmit)}, settleJobs ${per(spent.settleJobs)}, total ${per(spent.reserve + spent.recordSubmit + spent.settleJobs)}`);
  // A statement whose plan scans a table shows here (pg_stat counters are flushed at the end of each transaction).
  await new Promise((r) => setTimeout(r, 600));
  const scans = await sql<{ relname: string; seq_scan: string; idx_scan: string }>`select relname, seq_scan, idx_scan from pg_stat_user_tables where schemaname = ${schema} and relname in ('requests', 'upstream_jobs', 'api_keys', 'budget_slices') order by relname`.execute(database.db);
  console.log(`sequential scans: ${scans.rows.map((r) => `${r.relname} ${r.seq_scan} (index scans ${r.idx_scan})`).join(', ')}`);
  await ledger.slices?.returnAll();
} finally {
  await database.close();
  const c = new pg.Client({ connectionString: values['database-url'] });
  await c.connect();
  await c.query(`drop schema if exists "${schema}" cascade`);
  await c.end();
}
