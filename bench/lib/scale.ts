import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Redis } from 'ioredis';
import { getJson } from './http-client.js';

/**
 * What the scale benches (load, waiting, big-images, replicas) share: the
 * key and request they send, the service's environment, the emulator's admin
 * API, throwaway directories and PostgreSQL schemas, and a hard time limit.
 */

export const BENCH_KEY = 'sk-bench-scale-0123456789abcdef';
export const AUTH = { authorization: `Bearer ${BENCH_KEY}` };

export function imageBody(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'a lighthouse on a cliff at dusk, oil painting', size: '1024x1024', ...extra });
}

/**
 * The service's environment for a bench: our key, the standalone emulator,
 * no per-key limit (one key sends every request; the limiter's refusals are
 * not what is measured) and info-level access logs, as deployed.
 */
export function serviceEnv(emulatorUrl: string, dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    API_KEYS: BENCH_KEY,
    FAL_BASE_URL: emulatorUrl,
    FAL_KEY: 'bench-fal-key',
    DATA_DIR: dataDir,
    DEFAULT_RPM_LIMIT: '0',
    LOG_LEVEL: 'info',
    // Replicas on one PostgreSQL verify each other's image URLs with it.
    FILE_URL_SECRET: 'bench-file-url-secret-shared-by-replicas',
    ...extra,
  };
}

export async function tempDir(prefix: string, parent = tmpdir()): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(parent, prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export interface EmulatorJob {
  request_id: string;
  submitted_at: number;
  completed_at?: number;
  status: string;
}

export const emulatorAdmin = (url: string) => ({
  stats: async () => (await getJson<{ calls: Record<string, number> }>(`${url}/_emulator/stats`)).calls,
  jobs: async () => (await getJson<{ jobs: EmulatorJob[] }>(`${url}/_emulator/jobs`, 120_000)).jobs,
  health: () => getJson<{ jobs: number; jobs_created: number }>(`${url}/_emulator/health`),
  webhooks: async () =>
    (await getJson<{ deliveries: Array<{ request_id: string; attempt: number; at: string; status?: number; error?: string; ok: boolean }> }>(`${url}/_emulator/webhooks`, 120_000)).deliveries,
  async reset() {
    const res = await fetch(`${url}/_emulator/reset`, { method: 'POST' });
    if (!res.ok) throw new Error(`emulator reset: HTTP ${res.status}`);
  },
  async armFaults(faults: unknown[]) {
    const res = await fetch(`${url}/_emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(faults) });
    if (!res.ok) throw new Error(`arming faults: HTTP ${res.status} ${await res.text()}`);
  },
});

/**
 * A throwaway PostgreSQL schema, reached through `search_path` in the URL the
 * service is given, so a bench never touches another schema's tables.
 */
export async function pgSchema(baseUrl: string, prefix: string): Promise<{ url: string; schema: string; drop(): Promise<void> }> {
  const schema = `${prefix}_${process.pid}_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: baseUrl });
  await admin.connect();
  try {
    await admin.query(`create schema "${schema}"`);
  } finally {
    await admin.end();
  }
  const sep = baseUrl.includes('?') ? '&' : '?';
  return {
    schema,
    url: `${baseUrl}${sep}options=-c%20search_path%3D${schema}`,
    async drop() {
      const c = new pg.Client({ connectionString: baseUrl });
      await c.connect();
      try {
        await c.query(`drop schema if exists "${schema}" cascade`);
      } finally {
        await c.end();
      }
    },
  };
}

/**
 * A ceiling on the whole run: if something wedges, the process exits and its
 * exit hook (lib/procs.ts) kills every child, rather than holding the machine.
 */
export function timeBudget(ms: number, what: string): void {
  setTimeout(() => {
    process.stderr.write(`\n${what}: time budget of ${Math.round(ms / 1000)} s exceeded; stopping.\n`);
    process.exit(3);
  }, ms).unref();
}

export function log(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Deletes a bench's Redis keys (its unique prefix); a failure is logged, not thrown. */
export async function clearRedisPrefix(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
  } catch (err) {
    log(`could not clean Redis keys ${prefix}*: ${(err as Error).message}`);
  } finally {
    redis.disconnect();
  }
}

/** `n` keys issued through service `url`'s admin API, each with a budget of `budgetUsd`: their plaintexts. */
export async function issueKeys(url: string, adminKey: string, n: number, budgetUsd: string): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${url}/v1/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: `bench budgeted ${i}`, budget_usd: budgetUsd }),
    });
    if (res.status !== 201) throw new Error(`issuing a budgeted key: HTTP ${res.status} ${await res.text()}`);
    out.push(((await res.json()) as { key: string }).key);
  }
  return out;
}

