/**
 * Runs a storage suite once per dialect: SQLite in a temporary directory and
 * PostgreSQL in a throwaway schema, both removed afterwards.
 *
 * PostgreSQL comes from TEST_DATABASE_URL, else DATABASE_URL, else the
 * project machines' local server. When it cannot be reached the PostgreSQL
 * half is skipped with the reason, except under CI, where it fails: CI must
 * prove the PostgreSQL path, not quietly skip it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import type { WorkerTask } from '../db/fixtures/database-worker.js';
import { createDatabase, redactDatabaseUrl, type Database, type DatabaseDialect, type DatabaseOptions } from '../../src/db/index.js';

export const POSTGRES_URL =
  process.env.TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export type Availability = { ok: true } | { ok: false; reason: string };

let probe: Promise<Availability> | undefined;

/** Whether POSTGRES_URL answers, asked once per process. */
export function postgresAvailability(): Promise<Availability> {
  probe ??= (async (): Promise<Availability> => {
    const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      await client.query('select 1');
      return { ok: true };
    } catch (error) {
      return { ok: false, reason: (error as Error).message || String(error) };
    } finally {
      await client.end().catch(() => {});
    }
  })();
  return probe;
}

export interface TestStorage {
  readonly dialect: DatabaseDialect;
  /** What opens this storage with `createDatabase` (also from a child process). */
  readonly options: DatabaseOptions;
  /** Another Database on the same storage: its own connection (SQLite) or pool (PostgreSQL). */
  open(extra?: Partial<DatabaseOptions>): Promise<Database>;
  /** Closes every Database opened here and removes the storage. */
  destroy(): Promise<void>;
}

export interface DialectContext {
  readonly dialect: DatabaseDialect;
  /** Opens a Database on this suite's storage, created on first use and removed after the suite. */
  open(extra?: Partial<DatabaseOptions>): Promise<Database>;
  /** The suite's storage itself (created on first use). */
  storage(): Promise<TestStorage>;
  /** A separate, empty storage, removed after the suite. */
  fresh(): Promise<TestStorage>;
}

async function createSqliteStorage(): Promise<TestStorage> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gateway-db-test-'));
  return trackOpened('sqlite', { dataDir }, async () => {
    rmSync(dataDir, { recursive: true, force: true });
  });
}

async function createPostgresStorage(): Promise<TestStorage> {
  const schema = `t_${randomBytes(6).toString('hex')}`;
  return trackOpened('postgres', { databaseUrl: POSTGRES_URL, dataDir: tmpdir(), schema, poolSize: 5 }, async () => {
    const client = new pg.Client({ connectionString: POSTGRES_URL });
    await client.connect();
    try {
      await client.query(`drop schema if exists "${schema}" cascade`);
    } finally {
      await client.end();
    }
  });
}

function trackOpened(dialect: DatabaseDialect, options: DatabaseOptions, remove: () => Promise<void>): TestStorage {
  const opened: Database[] = [];
  return {
    dialect,
    options,
    async open(extra = {}) {
      const database = await createDatabase({ ...options, ...extra });
      opened.push(database);
      return database;
    },
    async destroy() {
      await Promise.all(opened.map((d) => d.close()));
      await remove();
    },
  };
}

/**
 * The environment for `startTestService` on `storage`. The service takes
 * only DATABASE_URL, so a PostgreSQL schema travels in the URL as the
 * connection's search_path (opened here first, which creates and migrates
 * it); SQLite needs nothing, the service gets its own DATA_DIR.
 */
export async function serviceEnv(storage: TestStorage): Promise<Record<string, string>> {
  if (storage.dialect === 'sqlite') return {};
  const { databaseUrl, schema } = storage.options;
  if (!databaseUrl || !schema) throw new Error('a PostgreSQL test storage has a URL and a schema');
  await storage.open();
  const url = new URL(databaseUrl);
  url.searchParams.set('options', `-c search_path=${schema}`);
  return { DATABASE_URL: url.toString(), FILE_URL_SECRET: TEST_FILE_URL_SECRET };
}

/** What every replica of a test deployment on PostgreSQL shares to verify each other's image URLs. */
export const TEST_FILE_URL_SECRET = 'test-file-url-secret-shared-by-replicas';

export function createStorage(dialect: DatabaseDialect): Promise<TestStorage> {
  return dialect === 'sqlite' ? createSqliteStorage() : createPostgresStorage();
}

const postgres = await postgresAvailability();

/**
 * Declares `suite` once per dialect, as `<title> (sqlite)` and
 * `<title> (postgres)`. Write the suite once; it receives how to open
 * databases for its dialect.
 */
export function describeEachDialect(title: string, suite: (ctx: DialectContext) => void): void {
  for (const dialect of ['sqlite', 'postgres'] as const) {
    const name = `${title} (${dialect})`;
    if (dialect === 'postgres' && !postgres.ok) {
      const why = `PostgreSQL not reachable at ${redactDatabaseUrl(POSTGRES_URL)}: ${postgres.reason}`;
      if (process.env.CI) {
        describe(name, () => {
          it('needs PostgreSQL under CI', () => {
            throw new Error(`${why} (CI is set, so this fails instead of skipping; set TEST_DATABASE_URL)`);
          });
        });
      } else {
        describe(name, { skip: `${why} (set TEST_DATABASE_URL to run these)` }, () => {});
      }
      continue;
    }
    describe(name, () => {
      const storages: TestStorage[] = [];
      let shared: Promise<TestStorage> | undefined;
      const fresh = async (): Promise<TestStorage> => {
        const storage = await createStorage(dialect);
        storages.push(storage);
        return storage;
      };
      const storage = (): Promise<TestStorage> => (shared ??= fresh());
      after(async () => {
        await Promise.all(storages.map((s) => s.destroy()));
      });
      suite({
        dialect,
        storage,
        fresh,
        async open(extra) {
          return (await storage()).open(extra);
        },
      });
    });
  }
}

const WORKER = fileURLToPath(new URL('../db/fixtures/database-worker.ts', import.meta.url));

/**
 * Runs each task in its own Node process against `storage`, all released at
 * once after every process has opened the database, and returns each
 * process's JSON answer. Real processes, because that is what "several
 * service processes share the database" means, and because a SQLite writer
 * waiting for a lock blocks its whole thread.
 */
export async function runInProcesses<T>(storage: TestStorage, tasks: WorkerTask[], timeoutMs = 30_000): Promise<T[]> {
  const children = tasks.map((task) => {
    const child = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify({ options: storage.options, task })], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const ready = new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (out.startsWith('ready\n')) resolve();
      };
      child.stdout.on('data', check);
      child.once('exit', (code) => reject(new Error(`worker exited (${code}) before ready: ${err}`)));
    });
    const done = new Promise<T>((resolve, reject) => {
      child.once('exit', (code) => {
        const last = out.trim().split('\n').at(-1) ?? '';
        if (code === 0 && last !== 'ready') resolve(JSON.parse(last) as T);
        else reject(new Error(`worker exited with ${code}: ${err || out}`));
      });
    });
    // Observed later through Promise.all; this only keeps an early failure of
    // one from being reported as unhandled while another is awaited.
    ready.catch(() => {});
    done.catch(() => {});
    return { child, ready, done };
  });
  const timer = setTimeout(() => children.forEach((c) => c.child.kill('SIGKILL')), timeoutMs);
  try {
    await Promise.all(children.map((c) => c.ready));
    for (const c of children) c.child.stdin.end('go\n');
    return await Promise.all(children.map((c) => c.done));
  } finally {
    clearTimeout(timer);
    for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
  }
}
