/**
 * SQLite through better-sqlite3, adapted for a ledger that several
 * connections (processes, or instances in one process) may write at once.
 */
import { resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import {
  CompiledQuery,
  SqliteAdapter,
  SqliteDialect,
  SqliteDriver,
  type DatabaseConnection,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type QueryCompiler,
} from 'kysely';

export interface SqliteOptions {
  file: string;
  busyTimeoutMs: number;
  synchronous: 'full' | 'normal';
}

/** A FIFO async lock. */
class AsyncLock {
  #tail: Promise<void> = Promise.resolve();

  acquire(): Promise<() => void> {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const ready = this.#tail.then(() => release);
    this.#tail = this.#tail.then(() => held);
    return ready;
  }
}

/**
 * better-sqlite3 waits for another connection's write lock synchronously
 * (busy_timeout), blocking the event loop. Between processes that is fine:
 * the holder runs elsewhere. Between two connections of the same process it
 * deadlocks until the timeout, because the holder needs this event loop to
 * reach its COMMIT. So connections to one file within a process take turns
 * through this lock first; it is per process on purpose, like the file lock
 * it stands in front of.
 */
const fileLocks = new Map<string, { lock: AsyncLock; users: number }>();

function retainFileLock(file: string): AsyncLock {
  const entry = fileLocks.get(file) ?? { lock: new AsyncLock(), users: 0 };
  entry.users += 1;
  fileLocks.set(file, entry);
  return entry.lock;
}

function releaseFileLock(file: string): void {
  const entry = fileLocks.get(file);
  if (!entry) return;
  entry.users -= 1;
  if (entry.users <= 0) fileLocks.delete(file);
}

class SerializedSqliteDriver implements Driver {
  readonly #inner: SqliteDriver;
  readonly #file: string;
  readonly #lock: AsyncLock;
  #release: (() => void) | undefined;
  #destroyed = false;

  constructor(inner: SqliteDriver, file: string) {
    this.#inner = inner;
    this.#file = file;
    this.#lock = retainFileLock(file);
  }

  init(): Promise<void> {
    return this.#inner.init();
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    const release = await this.#lock.acquire();
    try {
      const connection = await this.#inner.acquireConnection();
      this.#release = release;
      return connection;
    } catch (error) {
      release();
      throw error;
    }
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    // A plain BEGIN takes the write lock only at the first write; if another
    // connection committed in between, SQLite answers SQLITE_BUSY at once
    // (busy_timeout cannot help a stale snapshot). IMMEDIATE takes the write
    // lock up front, so read-then-write transactions queue instead of failing.
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }

  commitTransaction(connection: DatabaseConnection): Promise<void> {
    return this.#inner.commitTransaction(connection);
  }

  rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    return this.#inner.rollbackTransaction(connection);
  }

  savepoint(connection: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    return this.#inner.savepoint(connection, name, compile);
  }

  rollbackToSavepoint(
    connection: DatabaseConnection,
    name: string,
    compile: QueryCompiler['compileQuery'],
  ): Promise<void> {
    return this.#inner.rollbackToSavepoint(connection, name, compile);
  }

  releaseSavepoint(connection: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    return this.#inner.releaseSavepoint(connection, name, compile);
  }

  async releaseConnection(): Promise<void> {
    const release = this.#release;
    this.#release = undefined;
    try {
      await this.#inner.releaseConnection();
    } finally {
      release?.();
    }
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    releaseFileLock(this.#file);
    await this.#inner.destroy();
  }
}

/**
 * SQLite DDL is transactional, which Kysely's adapter does not claim. Saying
 * so makes the migrator run all pending migrations in one (immediate)
 * transaction: a failed migration leaves nothing half-applied, and a second
 * process starting at the same moment waits on the write lock and then finds
 * nothing left to do. Kysely's own SQLite migration lock is a no-op.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

class GatewaySqliteDialect extends SqliteDialect {
  readonly #file: string;

  constructor(config: ConstructorParameters<typeof SqliteDialect>[0], file: string) {
    super(config);
    this.#file = file;
  }

  override createDriver(): Driver {
    return new SerializedSqliteDriver(super.createDriver() as SqliteDriver, this.#file);
  }

  override createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }
}

/**
 * Kysely's SQLite driver prepares every query afresh; for the handful of
 * statements the ledger runs per request that was a fifth of its CPU time.
 * Statements are reusable in better-sqlite3, so keep them by SQL text (a busy
 * one, still being iterated, is never shared).
 */
function cacheStatements(db: BetterSqlite3.Database, max = 512): void {
  const cache = new Map<string, BetterSqlite3.Statement>();
  const prepare = db.prepare.bind(db);
  db.prepare = ((sql: string) => {
    const hit = cache.get(sql);
    if (hit && !hit.busy) return hit;
    const stmt = prepare(sql);
    if (!hit && cache.size < max) cache.set(sql, stmt);
    return stmt;
  }) as typeof db.prepare;
}

export function createSqliteDialect(options: SqliteOptions): Dialect {
  const file = resolve(options.file);
  return new GatewaySqliteDialect(
    {
      database: async () => {
        const db = new BetterSqlite3(file);
        // Money columns exceed 2^53; every integer comes back as bigint.
        db.defaultSafeIntegers(true);
        db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs))}`);
        db.pragma('journal_mode = WAL');
        db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
        db.pragma('foreign_keys = ON');
        cacheStatements(db);
        return db;
      },
    },
    file,
  );
}
