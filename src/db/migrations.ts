/**
 * The one set of migrations for both dialects. Migrations are code, not
 * files, so the service needs nothing beside its own modules at run time.
 * Names sort in the order they must run; never edit one that has shipped,
 * add the next.
 */
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import type { DatabaseDialect } from './database.js';
import { labelIndexFull, lostJobsIndex, uniqueWhenSet } from './migrations-indexes.js';
import { addBudgetSlices, addClientRequestId } from './migrations-per-key.js';

export function migrations(dialect: DatabaseDialect): Record<string, Migration> {
  return {
    '0001_metering': {
      async up(db: Kysely<any>) {
        await createKeysAndRequests(db);
        await createJobsIdempotencyAndOutbox(db, dialect);
      },
    },
    '0002_job_ledger': {
      async up(db: Kysely<any>) {
        await rebuildJobsKeyedByOurId(db);
        await createLeases(db);
      },
    },
    '0003_idempotency_lease': {
      async up(db: Kysely<any>) {
        await addIdempotencyLease(db);
      },
    },
    '0004_job_give_up': {
      async up(db: Kysely<any>) {
        await addGiveUpColumns(db);
      },
    },
    '0005_client_request_id': {
      async up(db: Kysely<any>) {
        await addClientRequestId(db, dialect);
      },
    },
    '0006_budget_slices': {
      async up(db: Kysely<any>) {
        await addBudgetSlices(db, dialect);
      },
    },
    '0007_unique_when_set': {
      async up(db: Kysely<any>) {
        await uniqueWhenSet(db, dialect);
      },
    },
    '0008_lost_jobs': {
      async up(db: Kysely<any>) {
        await lostJobsIndex(db);
      },
    },
    '0009_label_index_full': {
      async up(db: Kysely<any>) {
        await labelIndexFull(db);
      },
    },
  };
}

/** 0001, first half: the tables a reservation touches. */
async function createKeysAndRequests(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('api_keys')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull().defaultTo('issued'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('key_hash', 'text', (c) => c.notNull())
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('enabled', 'bigint', (c) => c.notNull().defaultTo(1))
    .addColumn('budget_micros', 'bigint')
    .addColumn('spent_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('reserved_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('rpm_limit', 'bigint')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addCheckConstraint('api_keys_kind', sql`kind in ('issued', 'static')`)
    .addCheckConstraint('api_keys_role', sql`role in ('user', 'admin')`)
    .addCheckConstraint('api_keys_enabled', sql`enabled in (0, 1)`)
    // A negative reservation can only come from a bookkeeping bug; fail
    // the transaction rather than let it hide.
    .addCheckConstraint('api_keys_amounts', sql`spent_micros >= 0 and reserved_micros >= 0`)
    .execute();

  // Unique among issued keys, which authenticate by it. Static rows only
  // meter environment keys, and one such key may appear twice (say, as
  // ADMIN_API_KEY under its own id and again in API_KEYS).
  await db.schema
    .createIndex('api_keys_issued_hash')
    .on('api_keys')
    .column('key_hash')
    .unique()
    .where(sql.ref('kind'), '=', 'issued')
    .execute();

  await db.schema
    .createTable('requests')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('key_id', 'text', (c) => c.notNull().references('api_keys.id'))
    .addColumn('model', 'text', (c) => c.notNull())
    .addColumn('endpoint', 'text', (c) => c.notNull())
    .addColumn('end_user', 'text')
    // What the charge depends on besides the images (prompt expansion,
    // markup at the time), so a request settled by reconciliation after
    // a restart is priced exactly as it would have been live.
    .addColumn('pricing_json', 'text')
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('reserved_micros', 'bigint', (c) => c.notNull())
    .addColumn('charge_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('credits', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('upstream_cost_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('images', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('error_code', 'text')
    .addColumn('idempotency_key', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('settled_at', 'text')
    .addCheckConstraint(
      'requests_status',
      sql`status in ('reserved', 'submitted', 'settled', 'released', 'failed', 'orphaned')`,
    )
    .addCheckConstraint('requests_amounts', sql`reserved_micros >= 0 and charge_micros >= 0`)
    .execute();
  // Usage and export read settled rows by settlement time; reconciliation reads open rows.
  await db.schema.createIndex('requests_status_settled').on('requests').columns(['status', 'settled_at', 'id']).execute();
  await db.schema.createIndex('requests_key_settled').on('requests').columns(['key_id', 'settled_at']).execute();
  await db.schema.createIndex('requests_status_created').on('requests').columns(['status', 'created_at']).execute();
}

/** 0001, second half: fal jobs, idempotency records and the billing outbox. */
async function createJobsIdempotencyAndOutbox(db: Kysely<any>, dialect: DatabaseDialect): Promise<void> {
  await db.schema
    .createTable('upstream_jobs')
    .addColumn('fal_request_id', 'text', (c) => c.primaryKey())
    .addColumn('request_id', 'text', (c) => c.notNull().references('requests.id'))
    .addColumn('endpoint', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('images', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('pixels', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('units_estimate', 'text')
    .addColumn('units_fal', 'text')
    .addColumn('upstream_cost_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('completed_at', 'text')
    .addCheckConstraint(
      'upstream_jobs_status',
      sql`status in ('submitted', 'completed', 'failed', 'cancelled', 'duplicate')`,
    )
    .execute();
  await db.schema.createIndex('upstream_jobs_request').on('upstream_jobs').column('request_id').execute();

  await db.schema
    .createTable('idempotency')
    .addColumn('key_id', 'text', (c) => c.notNull())
    .addColumn('idem_key', 'text', (c) => c.notNull())
    .addColumn('body_hash', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('status_code', 'bigint')
    .addColumn('response_json', 'text')
    .addColumn('request_id', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('idempotency_pk', ['key_id', 'idem_key'])
    .addCheckConstraint('idempotency_state', sql`state in ('running', 'done')`)
    .execute();
  await db.schema.createIndex('idempotency_expires').on('idempotency').column('expires_at').execute();

  await db.schema
    .createTable('outbox')
    .addColumn('seq', dialect === 'postgres' ? 'bigserial' : 'integer', (c) =>
      // In SQLite only the exact type name INTEGER makes the rowid alias;
      // AUTOINCREMENT keeps a deleted row's seq from being reused.
      dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement(),
    )
    .addColumn('event_id', 'text', (c) => c.notNull().unique())
    .addColumn('key_id', 'text', (c) => c.notNull())
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('payload_json', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('attempts', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('next_attempt_at', 'text', (c) => c.notNull())
    .addColumn('delivered_at', 'text')
    .addColumn('last_error', 'text')
    .execute();
  // The undelivered head of each key's queue is what delivery looks for.
  await db.schema
    .createIndex('outbox_undelivered')
    .on('outbox')
    .columns(['key_id', 'seq'])
    .where(sql.ref('delivered_at'), 'is', null)
    .execute();
}

/**
 * 0002: a fal job is a row before its submit leaves, so it is keyed by our
 * own id (`<request id>/<index>`); fal's id is added when submit answers,
 * and another id fal reports for the same job (its runner retry) is kept
 * beside it. Jobs fal made on refused submit attempts are `stray` rows:
 * their cost is recorded, never charged. Every job's cost is recorded,
 * failed ones included (fal bills some failures). A job's input hash is
 * written with the row, so a submit whose answer was lost can be found in
 * fal's request listing by its input.
 */
async function rebuildJobsKeyedByOurId(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('upstream_jobs_v2')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('request_id', 'text', (c) => c.notNull().references('requests.id'))
    .addColumn('kind', 'text', (c) => c.notNull().defaultTo('job'))
    .addColumn('fal_request_id', 'text', (c) => c.unique())
    .addColumn('fal_other_ids', 'text')
    .addColumn('input_hash', 'text')
    .addColumn('endpoint', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('images', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('pixels', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('units_estimate', 'text')
    .addColumn('units_fal', 'text')
    .addColumn('upstream_cost_micros', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('error_code', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('completed_at', 'text')
    .addCheckConstraint('upstream_jobs_kind', sql`kind in ('job', 'stray')`)
    .addCheckConstraint(
      'upstream_jobs_state',
      sql`status in ('submitting', 'submitted', 'completed', 'failed', 'cancelled', 'refused', 'lost')`,
    )
    .addCheckConstraint('upstream_jobs_cost', sql`upstream_cost_micros >= 0`)
    .execute();
  // Old rows were keyed by fal's id, which stays their id; a duplicate is a stray, still open unless it completed.
  await sql`insert into upstream_jobs_v2 (id, request_id, kind, fal_request_id, endpoint, status, images, pixels, units_estimate, units_fal, upstream_cost_micros, created_at, completed_at)
    select fal_request_id, request_id,
      case when status = 'duplicate' then 'stray' else 'job' end,
      fal_request_id, endpoint,
      case when status = 'duplicate' and completed_at is null then 'submitted' when status = 'duplicate' then 'completed' else status end,
      images, pixels, units_estimate, units_fal, upstream_cost_micros, created_at, completed_at
    from upstream_jobs`.execute(db);
  await db.schema.dropTable('upstream_jobs').execute();
  await db.schema.alterTable('upstream_jobs_v2').renameTo('upstream_jobs').execute();
  await db.schema.createIndex('upstream_jobs_request').on('upstream_jobs').column('request_id').execute();
  // Reconciliation looks for jobs not yet final.
  await db.schema
    .createIndex('upstream_jobs_open')
    .on('upstream_jobs')
    .columns(['status', 'created_at'])
    .where(sql.ref('status'), 'in', sql`('submitting', 'submitted')`)
    .execute();
}

/**
 * 0002, leases: each service process holds a row it renews (src/metering/leases.ts);
 * a request names the lease of the process that took it, so reconciliation
 * can tell a dead owner's request (settled at once) from a live one's (never).
 */
async function createLeases(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('leases')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('host', 'text', (c) => c.notNull())
    .addColumn('pid', 'bigint', (c) => c.notNull())
    .addColumn('started_at', 'text', (c) => c.notNull())
    .addColumn('heartbeat_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
  // No foreign key: a lease row is deleted when its process shuts down, and its requests keep the id.
  await db.schema.alterTable('requests').addColumn('lease_id', 'text').execute();
  await db.schema.createIndex('requests_lease').on('requests').columns(['lease_id', 'status']).execute();
}

/**
 * 0003: an `Idempotency-Key` claim names the lease of the process that will
 * write its answer (null once no process will: its caller left), so a retry
 * can tell a claim still being answered from one whose process died
 * (src/images/recover-answer.ts).
 */
async function addIdempotencyLease(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('idempotency').addColumn('lease_id', 'text').execute();
}

/**
 * 0004: what a job given up as `lost` keeps (src/metering/reconcile.ts): fal's
 * last word about it, and a cost that is our estimate when fal reported
 * none. Every job row gets, at reservation, the upstream cost it would have
 * if it completed as asked: the estimate a give-up records.
 */
async function addGiveUpColumns(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('upstream_jobs').addColumn('estimate_micros', 'bigint').execute();
  await db.schema.alterTable('upstream_jobs').addColumn('cost_estimated', 'bigint', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.alterTable('upstream_jobs').addColumn('fal_last_word', 'text').execute();
}

class InCodeMigrationProvider implements MigrationProvider {
  readonly #dialect: DatabaseDialect;
  constructor(dialect: DatabaseDialect) {
    this.#dialect = dialect;
  }
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations(this.#dialect);
  }
}

export interface MigrateOptions {
  /**
   * The PostgreSQL schema holding our tables. Kysely's bookkeeping tables must
   * live there too: its "does the table exist" check looks at every schema,
   * so a second schema in the same database would otherwise believe it was
   * already migrated.
   */
  schema?: string;
}

/**
 * Brings the schema to the latest migration and returns the names it applied.
 * Safe to run from several processes at once: on PostgreSQL the migrator holds
 * a session advisory lock around a single transaction; on SQLite it runs in one
 * immediate transaction (see `sqlite.ts`). Whoever comes second re-reads the
 * applied list under the lock and applies nothing.
 */
export async function migrateToLatest(
  db: Kysely<any>,
  dialect: DatabaseDialect,
  options: MigrateOptions = {},
): Promise<string[]> {
  const migrator = new Migrator({
    db,
    provider: new InCodeMigrationProvider(dialect),
    ...(options.schema ? { migrationTableSchema: options.schema } : {}),
  });
  let { error, results } = await migrator.migrateToLatest();
  // Kysely's Migrator lists every schema's tables before it takes its lock;
  // a schema another client drops or alters meanwhile fails that read
  // (3F000/42P01 naming the other schema, 42703 for a column another
  // migration just dropped, XX000 "cache lookup failed"). Nothing was
  // applied, so the run is repeated.
  for (let attempt = 1; error && attempt < 10 && droppedElsewhere(error, options.schema); attempt++) {
    await new Promise((r) => setTimeout(r, 20 * attempt));
    ({ error, results } = await migrator.migrateToLatest());
  }
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new Error(`database migration ${failed ?? ''} failed: ${(error as Error).message ?? String(error)}`, {
      cause: error,
    });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/** PostgreSQL's "schema / relation / column does not exist" for an object outside the schema being migrated. */
function droppedElsewhere(error: unknown, schema: string | undefined): boolean {
  const code = (error as { code?: unknown }).code;
  const message = String((error as Error).message ?? '');
  const catalogRace = code === '3F000' || code === '42P01' || code === '42703' || (code === 'XX000' && message.startsWith('cache lookup failed'));
  if (!catalogRace) return false;
  return schema === undefined || !message.includes(`"${schema}"`);
}
