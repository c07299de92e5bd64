/**
 * SQLite through better-sqlite3, adapted for a ledger that several
 * connections (processes, or instances in one process) may write at once.
 */
import { resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import {
  CompiledQuery,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  type QueryCompiler,
  type QueryResult,
} from 'kysely';

export interface SqliteOptions {
  file: string;
  busyTimeoutMs: number;
  synchronous: 'full' | 'normal';
}

/**
 * A FIFO async lock. `tryAcquire` takes it at once when it is free, so an
 * uncontended transaction pays no promise round trip for it.
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

/**
 * Kysely's Driver for one better-sqlite3 connection, written out rather than
 * wrapped around Kysely's SqliteDriver: that one keeps a promise mutex of its
 * own and answers every begin, commit and release through two or three
 * awaits, which the ledger's transactions (three per image request) paid on
 * every call. Here the per-file lock is the only wait, taken at once when
 * free, and every statement runs synchronously inside a resolved promise.
 */
class SerializedSqliteDriver implements Driver {
  readonly #open: () => BetterSqlite3.Database;
  readonly #file: string;
  readonly #lock: AsyncLock;
  #connection: SqliteConnection | undefined;
  #release: (() => void) | undefined;
  #destroyed = false;

  constructor(open: () => BetterSqlite3.Database, file: string) {
    this.#open = open;
    this.#file = file;
    this.#lock = retainFileLock(file);
  }

  async init(): Promise<void> {
    this.#connection = new SqliteConnection(this.#open());
  }

  acquireConnection(): Promise<DatabaseConnection> {
    const now = this.#lock.tryAcquire();
    if (now) return Promise.resolve(this.#hand(now));
    return this.#lock.acquire().then((release) => this.#hand(release));
  }

  #hand(release: () => void): DatabaseConnection {
    const connection = this.#connection;
    if (this.#destroyed || !connection) {
      release();
      throw new Error('the SQLite database is closed');
    }
    this.#release = release;
    return connection;
  }

  beginTransaction(connection: DatabaseConnection): Promise<void> {
    // A plain BEGIN takes the write lock only at the first write; if another
    // connection committed in between, SQLite answers SQLITE_BUSY at once
    // (busy_timeout cannot help a stale snapshot). IMMEDIATE takes the write
    // lock up front, so read-then-write transactions queue instead of failing.
    return run(connection, 'begin immediate');
  }

  commitTransaction(connection: DatabaseConnection): Promise<void> {
    return run(connection, 'commit');
  }

  rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    return run(connection, 'rollback');
  }

  savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    return run(connection, `savepoint ${quoteIdentifier(name)}`);
  }

  rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    return run(connection, `rollback to ${quoteIdentifier(name)}`);
  }

  releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    return run(connection, `release ${quoteIdentifier(name)}`);
  }

  releaseConnection(): Promise<void> {
    const release = this.#release;
    this.#release = undefined;
    release?.();
    return Promise.resolve();
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    releaseFileLock(this.#file);
    this.#connection?.db.close();
  }
}

class SqliteConnection implements DatabaseConnection {
  constructor(readonly db: BetterSqlite3.Database) {}

  executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    try {
      const stmt = this.db.prepare(query.sql);
      if (stmt.reader) return Promise.resolve({ rows: stmt.all(query.parameters) as R[] });
      const { changes, lastInsertRowid } = stmt.run(query.parameters);
      return Promise.resolve({ numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  // eslint-disable-next-line require-yield
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('streaming queries are not supported on this SQLite driver; page with limit instead');
  }
}

function run(connection: DatabaseConnection, statement: string): Promise<void> {
  return connection.executeQuery(CompiledQuery.raw(statement)).then(() => undefined);
}

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
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

/** SQLite through the driver above, with Kysely's own SQLite query compiler and introspector. */
export class GatewaySqliteDialect implements Dialect {
  readonly #open: () => BetterSqlite3.Database;
  readonly #file: string;

  constructor(open: () => BetterSqlite3.Database, file: string) {
    this.#open = open;
    this.#file = file;
  }

  createDriver(): Driver {
    return new SerializedSqliteDriver(this.#open, this.#file);
  }

  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }

  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return new SqliteIntrospector(db);
  }
}

/**
 * Kysely's SQLite driver prepares every query afresh, a cost paid again for
 * the same handful of statements on every request the ledger writes.
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
  return new GatewaySqliteDialect(() => {
    const db = new BetterSqlite3(file);
    // Money columns exceed 2^53; every integer comes back as bigint.
    db.defaultSafeIntegers(true);
    db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs))}`);
    enableWal(db, options.busyTimeoutMs);
    db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
    db.pragma('foreign_keys = ON');
    cacheStatements(db);
    return db;
  }, file);
}

/**
 * Switching a file to WAL needs it briefly alone, and SQLite answers
 * SQLITE_BUSY at once, without waiting on its busy handler, when another
 * process holds it at that moment (two replicas or a migration starting on
 * the same new file; seen as "database is locked" under load). Retried, at
 * startup only, within the busy timeout; the file stays in WAL once switched.
 */
export function enableWal(db: { pragma(source: string): unknown }, timeoutMs: number): void {
  const deadline = Date.now() + Math.max(0, timeoutMs);
  for (;;) {
    try {
      db.pragma('journal_mode = WAL');
      return;
    } catch (err) {
      if (!String((err as { code?: unknown }).code).startsWith('SQLITE_BUSY') || Date.now() >= deadline) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
}
