import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createDatabase } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { createLedger } from '../../src/metering/ledger.js';
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
}): Promise<LedgerCost> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-bench-ledger-'));
  const database = await createDatabase({ dataDir, sqliteSynchronous: opts.synchronous });
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
      ms += await timed(() => ledger.reserve({ requestId, keyId, model: 'alibaba/z-image-turbo', endpoint, maxChargeMicros: 5000n, pricing: '{"promptExpansion":false,"markup":"1.0"}' }));
      ms += await timed(() => ledger.recordSubmit({ requestId, falRequestId, endpoint }));
      await new Promise((r) => setTimeout(r, opts.gapMs));
      ms += await timed(() =>
        ledger.settleJobs({
          jobs: [{ falRequestId, images: 1, pixels: 1024 * 1024, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5000n }],
          settle: { requestId, chargeMicros: 5000n, credits: 10_000n, upstreamCostMicros: 5000n, images: 1 },
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
    await database.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}
