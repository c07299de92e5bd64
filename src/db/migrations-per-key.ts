/**
 * Migrations 0005 and 0006 (listed in src/db/migrations.ts): what a request
 * row says about its key — the caller's label, unique within the key, and
 * what funds the request's hold.
 */
import { sql, type Kysely } from 'kysely';
import type { DatabaseDialect } from './database.js';

/**
 * 0005: the caller's `x-request-id` is a label scoped to its key
 * (`client_request_id`, unique per key); `requests.id` is always ours. A
 * label global to all keys let one key learn (by a 409) that another had
 * used an id, and claim ids another would send.
 *
 * Existing rows keep their id, which jobs, idempotency records and billing
 * events already name. Whether an id came from the caller is knowable only
 * by its shape: ours are exactly `req_` + 32 lowercase hex digits
 * (newRequestId in src/http/request-id.ts), so every other id was a
 * caller's and becomes its row's label too, and the caller's key keeps the
 * 409 on reusing it. An id of our shape is left without a label: almost
 * always ours, which the caller never chose; a caller who sent one of
 * exactly that shape can send it once more under its key without a 409.
 */
export async function addClientRequestId(db: Kysely<any>, dialect: DatabaseDialect): Promise<void> {
  await db.schema.alterTable('requests').addColumn('client_request_id', 'text').execute();
  const ours = dialect === 'postgres' ? sql`id ~ '^req_[0-9a-f]{32}$'` : sql.raw(`id glob 'req_${'[0-9a-f]'.repeat(32)}'`);
  await sql`update requests set client_request_id = id where not (${ours})`.execute(db);
  // Rows without a label (null) never collide: both databases treat nulls in a unique index as distinct.
  await db.schema.createIndex('requests_key_client_id').on('requests').columns(['key_id', 'client_request_id']).unique().execute();
}

/**
 * 0006: what funds a request's hold (docs/LEDGER-COST.md). `none`: its key
 * has no budget and no shared row is written for it; `key`: the hold is on
 * the key row (rows written before this migration, and budgeted keys on
 * SQLite); `slice`: the hold is taken in memory from a slice of the key's
 * budget that the process's lease took (`budget_slices`,
 * src/metering/budget-slices.ts), whose charges are counted on the key row
 * when the slice is returned.
 *
 * On PostgreSQL the request indexes become partial, so a row is in an index
 * only while a reader needs it there (open rows for reconciliation, settled
 * rows for reports), and the foreign key from requests to api_keys goes: its
 * check share-locks the key row on every insert, which is the one shared row
 * an unbudgeted key must not touch; the reservation's INSERT … SELECT from
 * api_keys proves the key exists instead, and keys are never deleted.
 * SQLite keeps its indexes: it matches a partial index only to a query's
 * literal terms, and the ledger binds its values.
 */
export async function addBudgetSlices(db: Kysely<any>, dialect: DatabaseDialect): Promise<void> {
  await db.schema
    .alterTable('requests')
    .addColumn('funded_by', 'text', (c) => c.notNull().defaultTo('key').check(sql`funded_by in ('key', 'none', 'slice')`))
    .execute();
  await db.schema.alterTable('requests').addColumn('slice_id', 'text').execute();
  await db.schema
    .createTable('budget_slices')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('key_id', 'text', (c) => c.notNull())
    .addColumn('lease_id', 'text', (c) => c.notNull())
    .addColumn('granted_micros', 'bigint', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addCheckConstraint('budget_slices_granted', sql`granted_micros >= 0`)
    .execute();
  if (dialect !== 'postgres') return;
  await sql`alter table requests drop constraint if exists requests_key_id_fkey`.execute(db);
  for (const name of ['requests_status_settled', 'requests_key_settled', 'requests_status_created', 'requests_lease']) {
    await db.schema.dropIndex(name).ifExists().execute();
  }
  const open = sql<boolean>`status in ('reserved', 'submitted')`;
  await db.schema.createIndex('requests_open').on('requests').columns(['lease_id', 'created_at']).where(open).execute();
  await db.schema.createIndex('requests_settled').on('requests').columns(['settled_at', 'id']).where(sql.ref('status'), '=', 'settled').execute();
  await db.schema.createIndex('requests_key_settled').on('requests').columns(['key_id', 'settled_at']).where(sql.ref('status'), '=', 'settled').execute();
  await db.schema.createIndex('requests_slice').on('requests').column('slice_id').where(sql.ref('slice_id'), 'is not', null).execute();
}
