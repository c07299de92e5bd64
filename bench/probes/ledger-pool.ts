/**
 * PostgreSQL CPU per request of the ledger's three writes under load, by
 * connection pool size: `replicas` ledgers (each its own pool and lease, as
 * service processes would hold) share `concurrency` request loops, each
 * loop reserve → recordSubmit → the job's pause → settleJobs, as the
 * service makes them. Variants alternate round by round in one run, so
 * they are compared side by side on the same machine state
 * (docs/LEDGER-COST.md, "Connections").
 *
 *   npx tsx bench/probes/ledger-pool.ts [--pools=20,4] [--replicas=2] [--concurrency=64]
 *       [--rounds=4] [--duration=8] [--gap=20] [--database-url=postgres://postgres@127.0.0.1:5432/test]
 *
 * Measures every postgres process's CPU over each round (/proc), divided by
 * the requests the round completed; medians over rounds.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createDatabase, type Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { createLedger, jobIdFor, type Ledger } from '../../src/metering/ledger.js';
import { cpuDeltas, readAllCpu } from '../lib/procfs.js';
import { median } from '../lib/stats.js';

const { values } = parseArgs({
  options: {
    pools: { type: 'string', default: '20,4' },
    replicas: { type: 'string', default: '2' },
    concurrency: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '4' },
    duration: { type: 'string', default: '8' },
    gap: { type: 'string', default: '20' },
    'database-url': { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
  },
});
/**
 * `P`, `P:async` (synchronous_commit off on the variant's connections, to
 * size what commits cost) or `P:solo` (each write its own statement: no
 * group commit, src/metering/group-commit.ts).
 */
const specs = values.pools.split(',').map((v) => ({ label: v, pool: Number(v.split(':')[0]), async: v.includes(':async'), ordered: v.includes(':ordered'), solo: v.includes(':solo') }));
const replicas = Number(values.replicas);
const concurrency = Number(values.concurrency);
const rounds = Number(values.rounds);
const durationMs = Number(values.duration) * 1000;
const gapMs = Number(values.gap);
const url = values['database-url'];
const schema = `ledger_pool_${process.pid}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Variant {
  label: string;
  newId: () => string;
  ledgers: Ledger[];
  databases: Database[];
}

async function openVariant(spec: (typeof specs)[number], keyId: () => Promise<string>): Promise<Variant & { keyId: string }> {
  const databases: Database[] = [];
  const ledgers: Ledger[] = [];
  for (let i = 0; i < replicas; i++) {
    // The schema then goes in the same startup options (createDatabase's own would replace them).
    const database = spec.async
      ? await createDatabase({ databaseUrl: `${url}${url.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c search_path=${schema} -c synchronous_commit=off`)}`, dataDir: '/tmp', poolSize: spec.pool })
      : await createDatabase({ databaseUrl: url, dataDir: '/tmp', schema, poolSize: spec.pool });
    const lease = await createLeaseStore(database).acquire({ id: `pool-${spec.label}-${i}-${process.pid}`, host: 'probe', pid: process.pid, expiryMs: 3_600_000 });
    databases.push(database);
    ledgers.push(createLedger(database, { leaseId: lease.id, ...(spec.solo ? { groupCommit: false as const } : {}) }));
  }
  return { label: spec.label, newId: spec.ordered ? orderedId : randomId, ledgers, databases, keyId: await keyId() };
}

const randomId = () => `req_${randomUUID().replace(/-/g, '')}`;
/** Milliseconds first (12 hex digits), then random: consecutive ids sort together. */
const orderedId = () => `req_${Date.now().toString(16).padStart(12, '0')}${randomUUID().replace(/-/g, '').slice(12)}`;

async function oneRequest(ledger: Ledger, keyId: string, requestId: string): Promise<void> {
  const jobId = jobIdFor(requestId, 0);
  await ledger.reserve({ requestId, keyId, model: 'm', endpoint: 'e', maxChargeMicros: 5000n, jobs: 1, inputHashes: ['h'], estimates: [1000n] });
  await ledger.recordSubmit({ jobId, falRequestId: randomUUID() });
  await sleep(gapMs);
  await ledger.settleJobs({ jobs: [{ jobId, images: 1, pixels: 1_048_576, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 1000n }], settle: { requestId, chargeMicros: 4000n, credits: 4, images: 1 } });
}

async function round(v: Variant & { keyId: string }): Promise<{ perRequestMs: number; rps: number }> {
  let done = 0;
  let stop = false;
  const loops = Array.from({ length: concurrency }, async (_, i) => {
    const ledger = v.ledgers[i % v.ledgers.length]!;
    while (!stop) {
      await oneRequest(ledger, v.keyId, v.newId());
      done++;
    }
  });
  await sleep(1000);
  const before = readAllCpu();
  const done0 = done;
  const t0 = performance.now();
  await sleep(durationMs);
  const after = readAllCpu();
  const n = done - done0;
  const wall = performance.now() - t0;
  stop = true;
  await Promise.all(loops);
  const pgMs = cpuDeltas(before, after).filter((d) => d.comm === 'postgres').reduce((x, d) => x + d.ms, 0);
  return { perRequestMs: pgMs / Math.max(1, n), rps: (n * 1000) / wall };
}

const setup = await createDatabase({ databaseUrl: url, dataDir: '/tmp', schema, poolSize: 1 });
try {
  const keyId = (await createKeysStore(setup).create({ name: 'k', budgetMicros: null })).record.id;
  const variants = [];
  for (const spec of specs) variants.push(await openVariant(spec, async () => keyId));
  const results = new Map<string, Array<{ perRequestMs: number; rps: number }>>();
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      const res = await round(v);
      results.set(v.label, [...(results.get(v.label) ?? []), res]);
      console.log(`round ${r + 1} pool ${v.label}: ${res.rps.toFixed(0)} req/s, PostgreSQL ${res.perRequestMs.toFixed(3)} ms/request`);
    }
  }
  console.log(`\n${replicas} replicas, concurrency ${concurrency}, ${gapMs} ms job pause, ${rounds} rounds of ${durationMs / 1000} s, medians:`);
  for (const [label, rs] of results) {
    console.log(`pool ${label} per replica: ${median(rs.map((x) => x.rps)).toFixed(0)} req/s, PostgreSQL ${median(rs.map((x) => x.perRequestMs)).toFixed(3)} ms/request`);
  }
  for (const v of variants) for (const d of v.databases) await d.close();
} finally {
  await setup.close();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query(`drop schema if exists "${schema}" cascade`);
  await c.end();
}
