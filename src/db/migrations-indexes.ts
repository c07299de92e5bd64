/**
 * Migrations 0007 to 0009 (listed in src/db/migrations.ts): which rows the
 * ledger's indexes hold (docs/LEDGER-COST.md).
 */
import { sql, type Kysely } from 'kysely';
import type { DatabaseDialect } from './database.js';

/**
 * 0007: a unique index of a column that is usually null holds only the rows
 * where it is set (docs/LEDGER-COST.md). A request without a caller's label
 * and a job before fal has answered wrote a null entry that no reader looks
 * up and no uniqueness check compares (nulls are distinct). Both indexes are
 * rebuilt in the migration's transaction, which holds their tables until it
 * commits (on PostgreSQL reads too: dropping an index locks its table
 * exclusively). SQLite keeps the jobs' fal id as its table's UNIQUE
 * constraint, which it cannot drop without rebuilding the table. 0009 makes
 * the label's index full again.
 */
export async function uniqueWhenSet(db: Kysely<any>, dialect: DatabaseDialect): Promise<void> {
  await db.schema.dropIndex('requests_key_client_id').execute();
  await db.schema
    .createIndex('requests_key_client_id')
    .on('requests')
    .columns(['key_id', 'client_request_id'])
    .unique()
    .where(sql.ref('client_request_id'), 'is not', null)
    .execute();
  if (dialect !== 'postgres') return;
  const constraint = await sql<{ name: string }>`select c.conname as name from pg_constraint c
    join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
    where c.conrelid = 'upstream_jobs'::regclass and c.contype = 'u' and a.attname = 'fal_request_id' and cardinality(c.conkey) = 1`.execute(db);
  for (const { name } of constraint.rows) await sql`alter table upstream_jobs drop constraint ${sql.id(name)}`.execute(db);
  await db.schema.createIndex('upstream_jobs_fal_request_id').on('upstream_jobs').column('fal_request_id').unique().where(sql.ref('fal_request_id'), 'is not', null).execute();
}

/** 0008: jobs given up as lost, in the order they were: what reconciliation asks fal about again (src/metering/late-word.ts). */
export async function lostJobsIndex(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('upstream_jobs_lost').on('upstream_jobs').columns(['completed_at', 'id']).where(sql.ref('status'), '=', 'lost').execute();
}

/**
 * 0009: the per-key label's unique index is full again, so processes of two
 * versions can run side by side while replicas are replaced one by one. A
 * process older than 0007 names the index in its reservation's `ON CONFLICT`
 * without a predicate, which only a full index matches (PostgreSQL 42P10,
 * SQLite "ON CONFLICT clause does not match" otherwise); the current
 * reservations repeat `WHERE client_request_id IS NOT NULL` (`labelTaken`),
 * which a full index satisfies as well. A database at 0006 runs 0007 and
 * 0009 in one migration transaction, so no older process ever meets the
 * partial index. Making it partial again is for a migration that runs once
 * no process older than 0007 is left (docs/OPERATIONS.md).
 */
export async function labelIndexFull(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('requests_key_client_id').execute();
  await db.schema.createIndex('requests_key_client_id').on('requests').columns(['key_id', 'client_request_id']).unique().execute();
}
