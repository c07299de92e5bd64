import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import pino from 'pino';
import { Agent, fetch } from 'undici';
import { loadConfig, type Config } from '../../src/config.js';
import type { Emulator } from '../../src/emulator/index.js';
import { startService, type Service } from '../../src/service.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';

export const BENCH_API_KEY = 'sk-bench-0123456789abcdef0123';

/**
 * Path (b): our service as deployed by default, in this process, in front of
 * the same emulator: real HTTP on loopback, a real bearer key, the SQLite
 * ledger in a fresh directory on the machine's disk (os.tmpdir() here is
 * ext4, not tmpfs, so commits pay a real fsync), info-level access logs.
 */
export async function servicePath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  emulator: Emulator;
  body: Record<string, unknown>;
  env?: Record<string, string>;
  /**
   * Diagnostic only: the service's `SQLITE_SYNCHRONOUS` setting (default
   * normal), checked on the ledger's connection after start-up, to measure
   * what the other level costs.
   */
  sqliteSynchronous?: 'normal' | 'full';
}): Promise<BenchPath & { service: Service; config: Config; dataDir: string }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-bench-'));
  // One log line per request is part of the cost; /dev/null keeps the
  // write(2) and the JSON encoding without filling the terminal.
  const logger = pino({ level: opts.env?.LOG_LEVEL ?? 'info' }, pino.destination({ dest: '/dev/null', sync: true }));
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: '0',
    API_KEYS: BENCH_API_KEY,
    FAL_BASE_URL: opts.emulator.url,
    FAL_KEY: 'bench-fal-key',
    DATA_DIR: dataDir,
    // One key makes every request: measure the limiter's cost, not its refusals.
    DEFAULT_RPM_LIMIT: '1000000',
    ...(opts.sqliteSynchronous ? { SQLITE_SYNCHRONOUS: opts.sqliteSynchronous } : {}),
    ...opts.env,
  });
  const service = await startService(config, { logger, emulator: opts.emulator });
  if (opts.sqliteSynchronous) await checkSynchronous(service, opts.sqliteSynchronous);
  const url = `${service.url}/v1/images/generations`;
  const payload = JSON.stringify(opts.body);
  const headers = { authorization: `Bearer ${BENCH_API_KEY}`, 'content-type': 'application/json' };
  // Keep-alive like an SDK client in production, and long enough to survive
  // the other paths' rounds, so a round never starts by reconnecting.
  const client = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    service,
    config,
    dataDir,
    async call(signal) {
      const res = await fetch(url, { method: 'POST', headers, body: payload, signal, dispatcher: client });
      const json = (await res.json()) as { meta?: { fal_request_id?: string }; error?: { message?: string } };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${json.error?.message ?? 'no error message'}`);
      return { upstreamId: json.meta?.fal_request_id, doneAtMs: Date.now() };
    },
    async close() {
      await client.close();
      await service.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The level the ledger's one SQLite connection runs at, read back from SQLite itself. */
async function checkSynchronous(service: Service, level: 'normal' | 'full'): Promise<void> {
  if (service.database.dialect !== 'sqlite') throw new Error('sqliteSynchronous needs the SQLite ledger');
  const { rows } = await sql<{ synchronous: number | bigint }>`pragma synchronous`.execute(service.database.db);
  const got = Number(rows[0]?.synchronous);
  const want = level === 'normal' ? 1 : 2;
  if (got !== want) throw new Error(`pragma synchronous is ${got}, wanted ${want}`);
}
