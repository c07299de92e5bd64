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
 * The ledger on its own, without HTTP or fal: the four writes one image
 * request makes (reserve, recordSubmit, completeJob, settle), in the order
 * the service makes them, against a fresh SQLite file on the same disk the
 * service would use. Separates what metering costs from everything else.
 */

export interface LedgerCost {
  synchronous: 'full' | 'normal';
  concurrency: number;
  lifecycles: number;
  /** Wall time of one request's four writes, ms. */
  lifecycleMs: Summary;
  /** Process CPU per request's four writes, ms. */
  cpuMsPerLifecycle: number;
  /** Requests' worth of writes per second. */
  throughput: number;
  /** Event-loop share spent inside the writes (1 = nothing else could run). */
  eventLoopUtilization: number;
}

export async function measureLedger(opts: { synchronous: 'full' | 'normal'; concurrency: number; durationMs: number; maxLifecycles: number }): Promise<LedgerCost> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-bench-ledger-'));
  const database = await createDatabase({ dataDir, sqliteSynchronous: opts.synchronous });
  try {
    const keyId = 'static-bench000';
    await createKeysStore(database).ensureStatic({ id: keyId, keyHash: 'b'.repeat(64), role: 'user' });
    const ledger = createLedger(database);
    const one = async () => {
      const requestId = `req_${randomUUID().replace(/-/g, '')}`;
      const falRequestId = randomUUID();
      const endpoint = 'fal-ai/z-image/turbo';
      await ledger.reserve({ requestId, keyId, model: 'alibaba/z-image-turbo', endpoint, maxChargeMicros: 5000n, pricing: '{"promptExpansion":false,"markup":"1.0"}' });
      await ledger.recordSubmit({ requestId, falRequestId, endpoint });
      await ledger.completeJob({ falRequestId, images: 1, pixels: 1024 * 1024, unitsEstimate: '1', unitsFal: '1', upstreamCostMicros: 5000n });
      await ledger.settle({ requestId, chargeMicros: 5000n, credits: 10_000n, upstreamCostMicros: 5000n, images: 1 });
    };
    await one();
    const samples: number[] = [];
    const stopAt = performance.now() + opts.durationMs;
    const cpu0 = process.cpuUsage();
    const elu0 = performance.eventLoopUtilization();
    const t0 = performance.now();
    const worker = async () => {
      while (performance.now() < stopAt && samples.length < opts.maxLifecycles) {
        const s = performance.now();
        await one();
        samples.push(performance.now() - s);
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    return {
      synchronous: opts.synchronous,
      concurrency: opts.concurrency,
      lifecycles: samples.length,
      lifecycleMs: summarize(samples),
      cpuMsPerLifecycle: (cpu.user + cpu.system) / 1000 / samples.length,
      throughput: samples.length / (wallMs / 1000),
      eventLoopUtilization: performance.eventLoopUtilization(elu0).utilization,
    };
  } finally {
    await database.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}
