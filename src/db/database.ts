/**
 * The database factory: SQLite under the data directory by default,
 * PostgreSQL when a `postgres://` URL is given. Everything above this file
 * sees one `Kysely<DB>` and does not branch on the dialect except where SQL
 * itself differs.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Kysely, PostgresDialect, sql, type Dialect } from 'kysely';
import pg from 'pg';
import { migrateToLatest } from './migrations.js';
import { statementName } from './prepared.js';
import type { DB } from './schema.js';
import { createSqliteDialect } from './sqlite.js';

export type DatabaseDialect = 'sqlite' | 'postgres';

/** The part of a pino logger this module uses. */
export interface DbLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface DatabaseOptions {
  /** `postgres://` or `postgresql://` selects PostgreSQL; absent selects SQLite. */
  databaseUrl?: string | undefined;
  /** SQLite lives at `<dataDir>/gateway.sqlite`; the directory is created. */
  dataDir: string;
  logger?: DbLogger | undefined;
  /**
   * PostgreSQL only: the schema for every table, set as each connection's
   * search_path and created if missing. Lets tests (or tenants) share one
   * database without seeing each other. Ignored for SQLite.
   */
  schema?: string | undefined;
  /** PostgreSQL pool size. */
  poolSize?: number | undefined;
  /**
   * PostgreSQL: how long to wait for a connection. Bounded so that a database
   * that stops answering turns into a prompt 503, not a request that hangs.
   */
  connectTimeoutMs?: number | undefined;
  /**
   * SQLite `synchronous`. `full` (default) survives power loss after commit;
   * `normal` survives process crashes only but saves an fsync per commit.
   */
  sqliteSynchronous?: 'full' | 'normal' | undefined;
  /** How long a SQLite connection waits for another's write lock. */
  sqliteBusyTimeoutMs?: number | undefined;
  /** Run migrations on open (default true). */
  migrate?: boolean | undefined;
}

export interface Database {
  readonly db: Kysely<DB>;
  /** PostgreSQL: the connections of the ledger's grouped writes (openPostgres); undefined on SQLite. */
  readonly writes: Kysely<DB> | undefined;
  readonly dialect: DatabaseDialect;
  /** The PostgreSQL schema in use (undefined for SQLite). */
  readonly schema: string | undefined;
  /** Rejects when the database cannot answer a trivial query. */
  ping(): Promise<void>;
  /** Applies pending migrations; returns the names applied (empty when up to date). */
  migrate(): Promise<string[]>;
  close(): Promise<void>;
}

const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const PG_INT8_OID = 20;

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

/** The URL without its password, for log lines and error messages. */
export function redactDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable database URL)';
  }
}

export async function createDatabase(options: DatabaseOptions): Promise<Database> {
  const url = options.databaseUrl?.trim() || undefined;
  if (url !== undefined && !isPostgresUrl(url)) {
    throw new Error(
      `DATABASE_URL must start with postgres:// or postgresql:// (got ${redactDatabaseUrl(url)}); leave it unset for SQLite under DATA_DIR`,
    );
  }
  const database = url === undefined ? openSqlite(options) : await openPostgres(url, options);
  if (options.migrate !== false) {
    try {
      const applied = await database.migrate();
      if (applied.length > 0) options.logger?.info({ migrations: applied, dialect: database.dialect }, 'database migrated');
    } catch (error) {
      await database.close().catch(() => {});
      throw error;
    }
  }
  return database;
}

function openSqlite(options: DatabaseOptions): Database {
  mkdirSync(options.dataDir, { recursive: true });
  const file = join(options.dataDir, 'gateway.sqlite');
  const dialect = createSqliteDialect({
    file,
    busyTimeoutMs: options.sqliteBusyTimeoutMs ?? 5000,
    synchronous: options.sqliteSynchronous ?? 'full',
  });
  return wrap(new Kysely<DB>({ dialect }), 'sqlite', undefined);
}

async function openPostgres(url: string, options: DatabaseOptions): Promise<Database> {
  const schema = options.schema;
  if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
    throw new Error(`invalid PostgreSQL schema name ${JSON.stringify(schema)}`);
  }
  if (schema !== undefined) await createSchemaIfMissing(url, schema);

  const pool = openPool(url, schema, options, options.poolSize ?? 10);
  // The ledger's grouped writes (src/metering/group-commit.ts) have
  // connections of their own, one per kind of write, with settings for the
  // four statements they run (GROUPED_WRITE_SETTINGS). Other queries keep
  // the server's defaults.
  const writePool = openPool(url, schema, options, GROUPED_WRITE_CONNECTIONS, GROUPED_WRITE_SETTINGS);
  const dialect: Dialect = new PostgresDialect({ pool });
  const db = new Kysely<DB>({ dialect });
  const writes = new Kysely<DB>({ dialect: new PostgresDialect({ pool: writePool }) });
  let effectiveSchema = schema;
  if (effectiveSchema === undefined) {
    try {
      const result = await sql<{ schema: string }>`select current_schema() as schema`.execute(db);
      effectiveSchema = result.rows[0]?.schema ?? 'public';
    } catch (error) {
      await db.destroy().catch(() => {});
      await writes.destroy().catch(() => {});
      throw new Error(`PostgreSQL not reachable at ${redactDatabaseUrl(url)}: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }
  return wrap(db, 'postgres', effectiveSchema, writes);
}

/** Connections of the ledger's grouped writes: one for each kind (reserve without a budget, reserve from a slice, recordSubmit, settle). */
export const GROUPED_WRITE_CONNECTIONS = 4;
/**
 * The grouped writes' session (src/metering/ledger-pg.ts, "Plans"): each
 * named statement keeps its generic plan (PostgreSQL's own choice planned
 * them anew on most runs, which cost more than running them), and that plan
 * reaches rows by index even when it was made on empty tables, whose scan
 * the planner would otherwise price below any index and keep. Every row
 * these statements touch is named by its key, so an index is always right.
 */
export const GROUPED_WRITE_SETTINGS = 'set plan_cache_mode = force_generic_plan; set enable_seqscan = off';

function openPool(url: string, schema: string | undefined, options: DatabaseOptions, max: number, setup?: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 5000,
    // A startup parameter rather than a SET after connect: it applies before
    // the pool hands the connection to anyone, with no extra round trip.
    ...(schema !== undefined ? { options: `-c search_path=${schema}` } : {}),
    // pg answers int8 as a string; money must come back as bigint.
    types: {
      getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
        oid === PG_INT8_OID && format !== 'binary'
          ? (value: string) => BigInt(value)
          : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
    },
  });
  // An idle client losing its connection emits 'error' on the pool; unhandled,
  // that would crash the process instead of failing the next query.
  pool.on('error', (error) => options.logger?.warn({ err: error }, 'idle PostgreSQL connection failed'));
  // A client in use has no pool listener: its connection lost mid-transaction
  // would be an unhandled 'error' event, a crash. The query in flight fails
  // on its own (storage unavailable, src/db/errors.ts) and the pool drops the
  // client when it is released.
  pool.on('connect', (client) => {
    client.on('error', (error) => options.logger?.warn({ err: error }, 'PostgreSQL connection lost while in use'));
    sendPreparedByName(client);
    // Queued on the client before anything the pool hands it out for. A
    // session setting, not a startup option: a URL's own `options` would
    // replace that.
    if (setup !== undefined) client.query(setup).catch((error: unknown) => options.logger?.warn({ err: error, setup }, 'PostgreSQL connection setting failed'));
  });
  return pool;
}

/**
 * Kysely sends every query as text and values; a text compiled once by
 * src/db/prepared.ts goes instead under its name, so node-postgres parses it
 * on this connection once and then only binds and executes it.
 */
function sendPreparedByName(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  client.query = ((config: unknown, values?: unknown, callback?: unknown) => {
    const name = typeof config === 'string' && Array.isArray(values) ? statementName(config) : undefined;
    if (name !== undefined) return query({ name, text: config, values }, callback);
    return query(config, values, callback);
  }) as typeof client.query;
}

async function createSchemaIfMissing(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
  } catch (error) {
    throw new Error(`PostgreSQL not reachable at ${redactDatabaseUrl(url)}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  try {
    await client.query(`create schema if not exists "${schema}"`);
  } catch (error) {
    // Two processes creating the same schema at once can both pass the "if
    // not exists" check; the loser gets a unique violation although the
    // schema now exists, which is all we wanted.
    const exists = await client.query('select 1 from pg_namespace where nspname = $1', [schema]);
    if (exists.rowCount === 0) throw error;
  } finally {
    await client.end().catch(() => {});
  }
}

function wrap(db: Kysely<DB>, dialect: DatabaseDialect, schema: string | undefined, writes?: Kysely<DB>): Database {
  let closed: Promise<void> | undefined;
  return {
    db,
    writes,
    dialect,
    schema,
    async ping() {
      await sql`select 1`.execute(db);
    },
    migrate() {
      return migrateToLatest(db, dialect, schema !== undefined ? { schema } : {});
    },
    close() {
      closed ??= Promise.all([db.destroy(), writes?.destroy()]).then(() => {});
      return closed;
    },
  };
}
