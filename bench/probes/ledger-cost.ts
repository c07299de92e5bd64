import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { sql } from 'kysely';
import { createDatabase } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { summarize, type Summary } from '../lib/stats.js';

/**
 * The ledger on its own, without HTTP or fal: the three writes one image
 * request makes (reserve, recordSubmit, settleJobs), in the order
 * the service makes them, against a fresh SQLite file on the same disk the
 * service would use. Separates what metering costs from everything else.
 *
 * The job's own duration is kept as a pause between recordSubmit and
 * settleJobs: on a shared disk an fsync costs more when other writers had
 * time to dirty the journal in between, so back-to-back writes would flatter
 * synchronous=FULL.
 *
 * Run on its own (bench/overhead.ts also calls `measureLedger` in its
 * diagnostic pass):
 *
 *   npx tsx bench/probes/ledger-cost.ts [--synchronous=full,normal]
 *       [--concurrency=1,16] [--duration=S] [--gap=MS] [--repeat=N]
 *       [--database-url=postgres://…]
 *
 * Defaults: both synchronous settings, concurrency 1 and 16, 4 s each, a
 * 20 ms gap, one pass (the table of bench/README.md, "The ledger alone").
 * With --database-url the ledger runs on PostgreSQL in a throwaway schema
 * (synchronous does not apply there and is reported as given).
 */

export interface LedgerCost {
  synchronous: 'full' | 'normal';
  concurrency: number;
  gapMs: number;
  lifecycles: number;
  /** Wall time of one request's three writes (pause excluded, lock waits included), ms. */
  writesMs: Summary;
  /** Wall time of one write, ms. */
  perWriteMs: Summary;
  /** Process CPU per request's three writes, ms. */
  cpuMsPerLifecycle: number;
}

export async function measureLedger(opts: {
  synchronous: 'full' | 'normal';
  concurrency: number;
  gapMs: number;
  durationMs: number;
  maxLifecycles: number;
  /** PostgreSQL instead of a fresh SQLite file; the probe's tables go in a schema of their own, dropped afterwards. */
  databaseUrl?: string | undefined;
}): Promise<LedgerCost> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-bench-ledger-'));
  const schema = opts.databaseUrl ? `bench_ledger_${randomUUID().replace(/-/g, '').slice(0, 12)}` : undefined;
  const database = await createDatabase({ dataDir, sqliteSynchronous: opts.synchronous, databaseUrl: opts.databaseUrl, schema });
  try {
    const keyId = 'static-bench000';
    await createKeysStore(database).ensureStatic({ id: keyId, keyHash: 'b'.repeat(64), role: 'user' });
    const ledger = createLedger(database);
    const perWrite: number[] = [];
    const timed = async (write: () => Promise<unknown>): Promise<number> => {
      const t = performance.now();
      await write();
      const d = performance.now() - t;
      perWrite.push(d);
      return d;
    };
    const one = async (): Promise<number> => {
      const requestId = `req_${randomUUID().replace(/-/g, '')}`;
      const falRequestId = randomUUID();
      const endpoint = 'fal-ai/z-image/turbo';
      let ms = 0;
      ms += await timed(() => ledger.reserve({ requestId, keyId, model: 'alibaba/z-image-turbo', endpoint, maxChargeMicros: 5000n, pricing: '{"promptExpansion":false,"markup":"1.0"}', jobs: 1 }));
      ms += await timed(() => ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId }));
      await new Promise((r) => setTimeout(r, opts.gapMs));
      ms += await timed(() =>
        ledger.settleJobs({
          jobs: [{ jobId: jobIdFor(requestId, 0), images: 1, pixels: 1024 * 1024, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5000n }],
          settle: { requestId, chargeMicros: 5000n, credits: 10_000n, images: 1 },
        }),
      );
      return ms;
    };
    await one();
    perWrite.length = 0;
    const samples: number[] = [];
    const stopAt = performance.now() + opts.durationMs;
    // CPU spent while pausing is near zero, so process CPU over the run is the writes' CPU.
    const cpu0 = process.cpuUsage();
    const worker = async () => {
      while (performance.now() < stopAt && samples.length < opts.maxLifecycles) samples.push(await one());
    };
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    const cpu = process.cpuUsage(cpu0);
    return {
      synchronous: opts.synchronous,
      concurrency: opts.concurrency,
      gapMs: opts.gapMs,
      lifecycles: samples.length,
      writesMs: summarize(samples),
      perWriteMs: summarize(perWrite),
      cpuMsPerLifecycle: (cpu.user + cpu.system) / 1000 / samples.length,
    };
  } finally {
    if (schema !== undefined) await sql.raw(`drop schema if exists "${schema}" cascade`).execute(database.db);
    await database.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      synchronous: { type: 'string', default: 'full,normal' },
      concurrency: { type: 'string', default: '1,16' },
      duration: { type: 'string', default: '4' },
      gap: { type: 'string', default: '20' },
      repeat: { type: 'string', default: '1' },
      'database-url': { type: 'string' },
    },
  });
  const settings = values.synchronous.split(',').map((s) => {
    if (s !== 'full' && s !== 'normal') throw new Error(`--synchronous takes full and/or normal, not ${s}`);
    return s;
  });
  const concurrencies = values.concurrency.split(',').map(Number);
  const fmt = (n: number): string => (n >= 10 ? n.toPrecision(3) : n.toFixed(2));
  console.log('| synchronous | concurrency | requests | three writes p50 | p99 | one write p50 | p99 | CPU per request |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (let pass = 0; pass < Number(values.repeat); pass++) {
    for (const synchronous of settings) {
      for (const concurrency of concurrencies) {
        const c = await measureLedger({
          synchronous,
          concurrency,
          gapMs: Number(values.gap),
          durationMs: Number(values.duration) * 1000,
          maxLifecycles: 20_000,
          databaseUrl: values['database-url'],
        });
        const label = values['database-url'] ? `${synchronous.toUpperCase()} (PostgreSQL)` : synchronous.toUpperCase();
        console.log(
          `| ${label} | ${c.concurrency} | ${c.lifecycles} | ${fmt(c.writesMs.p50)} | ${fmt(c.writesMs.p99)} | ${fmt(c.perWriteMs.p50)} | ${fmt(c.perWriteMs.p99)} | ${fmt(c.cpuMsPerLifecycle)} |`,
        );
      }
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
