/**
 * SQLite through better-sqlite3, adapted for a ledger that several
 * connections (processes, or instances in one process) may write at once.
 */
import { resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import {
  CompiledQuery,
  type QueryResult,
  SqliteAdapter,
  SqliteDialect,
  SqliteDriver,
  type DatabaseConnection,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type QueryCompiler,
} from 'kysely';

/** Runs one compiled query on the connection, synchronously. */
export type SqliteExecute = (query: CompiledQuery) => QueryResult<unknown>;

/**
 * Synchronous transactions on the connection Kysely uses, for the few writes
 * every image request makes. Kysely's transaction costs a dozen promise hops
 * and a query executor per statement, as much as SQLite spends on the
 * statements themselves (measured with one connection, wall time per call:
 * reserve 263 → 162 µs, settleJobs 313 → 206 µs; what is left is mostly
 * SQLite's own statements and commit).
 */
export interface SqliteDirect {
  /**
   * Runs `work` between BEGIN IMMEDIATE and COMMIT (ROLLBACK when it throws)
   * under the same per-file lock as every Kysely query, so it never
   * interleaves with a Kysely transaction. `work` must be synchronous: when
   * the lock is free, the whole transaction has run by the time this returns.
   */
  transaction<T>(work: (execute: SqliteExecute) => T): Promise<T>;
}

export interface SqliteOptions {
  file: string;
  busyTimeoutMs: number;
  synchronous: 'full' | 'normal';
}

/**
 * A FIFO async lock. `tryAcquire` takes it at once when it is free, so a
 * holder that does all its work synchronously (see `SqliteDirect`) pays no
 * promise round trip for it.
 */
class AsyncLock {
  #held = false;
  readonly #waiters: Array<(release: () => void) => void> = [];

  acquire(): Promise<() => void> {
    const now = this.tryAcquire();
    if (now) return Promise.resolve(now);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The release function when the lock was free (now held), else undefined. */
  tryAcquire(): (() => void) | undefined {
    if (this.#held) return undefined;
    this.#held = true;
    return this.#releaser();
  }

  #releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      // Handed straight to the next waiter: nobody can slip in between.
      const next = this.#waiters.shift();
      if (next) next(this.#releaser());
      else this.#held = false;
    };
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

/** The better-sqlite3 handle the dialect opened, once Kysely has initialised its driver. */
interface Handle {
  db: BetterSqlite3.Database | undefined;
}

class SerializedSqliteDriver implements Driver {
  readonly #inner: SqliteDriver;
  readonly #file: string;
  readonly #lock: AsyncLock;
  readonly #handle: Handle;
  #release: (() => void) | undefined;
  #destroyed = false;

  constructor(inner: SqliteDriver, file: string, handle: Handle) {
    this.#inner = inner;
    this.#file = file;
    this.#lock = retainFileLock(file);
    this.#handle = handle;
  }

  /** See SqliteDirect. The handle must exist (Kysely has run a query); callers make sure. */
  directTransaction<T>(work: (execute: SqliteExecute) => T): Promise<T> {
    const release = this.#lock.tryAcquire();
    if (release) return this.#runHolding(work, release);
    return this.#lock.acquire().then((r) => this.#runHolding(work, r));
  }

  get initialised(): boolean {
    return this.#handle.db !== undefined;
  }

  #runHolding<T>(work: (execute: SqliteExecute) => T, release: () => void): Promise<T> {
    try {
      return Promise.resolve(this.#runDirect(work));
    } catch (error) {
      return Promise.reject(error);
    } finally {
      release();
    }
  }

  #runDirect<T>(work: (execute: SqliteExecute) => T): T {
    const db = this.#handle.db;
    if (this.#destroyed || !db) throw new Error('the SQLite database is closed');
    // Holding the file lock means no Kysely connection is checked out (it is
    // taken only under this lock), so the connection is not inside a transaction.
    db.prepare('begin immediate').run();
    try {
      const out = work((query) => executeOn(db, query));
      db.prepare('commit').run();
      return out;
    } catch (error) {
      if (db.inTransaction) db.prepare('rollback').run();
      throw error;
    }
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

/** What Kysely's SqliteConnection.executeQuery answers, without the promise. */
function executeOn(db: BetterSqlite3.Database, query: CompiledQuery): QueryResult<unknown> {
  const stmt = db.prepare(query.sql);
  if (stmt.reader) return { rows: stmt.all(query.parameters) };
  const { changes, lastInsertRowid } = stmt.run(query.parameters);
  return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
}

export class GatewaySqliteDialect extends SqliteDialect {
  readonly #file: string;
  readonly #handle: Handle;
  #driver: SerializedSqliteDriver | undefined;

  constructor(config: ConstructorParameters<typeof SqliteDialect>[0], file: string, handle: Handle) {
    super(config);
    this.#file = file;
    this.#handle = handle;
  }

  override createDriver(): Driver {
    this.#driver = new SerializedSqliteDriver(super.createDriver() as SqliteDriver, this.#file, this.#handle);
    return this.#driver;
  }

  /**
   * Direct transactions on this dialect's connection. `init` makes Kysely open
   * the connection when it has not yet (any trivial query through it).
   */
  direct(init: () => Promise<void>): SqliteDirect {
    return {
      transaction: (work) => {
        const driver = this.#driver;
        if (!driver) return Promise.reject(new Error('the SQLite dialect is not in use by a Kysely instance'));
        if (driver.initialised) return driver.directTransaction(work);
        return init().then(() => driver.directTransaction(work));
      },
    };
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

export function createSqliteDialect(options: SqliteOptions): GatewaySqliteDialect {
  const file = resolve(options.file);
  const handle: Handle = { db: undefined };
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
        handle.db = db;
        return db;
      },
    },
    file,
    handle,
  );
}
