import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, migrations, toIsoTimestamp, type Database, type DB } from '../../src/db/index.js';
import { describeEachDialect, POSTGRES_URL, runInProcesses } from '../helpers/databases.js';

const TABLES = ['api_keys', 'idempotency', 'leases', 'outbox', 'requests', 'upstream_jobs'];
const ALL_MIGRATIONS = Object.keys(migrations('sqlite'));

describe('createDatabase', () => {
  it('puts SQLite at <dataDir>/gateway.sqlite, creating the directory, in WAL mode with foreign keys on', async (t) => {
    const root = mkdtempSync(join(tmpdir(), 'gateway-db-factory-'));
    t.after(() => rmSync(root, { recursive: true, force: true }));
    const dataDir = join(root, 'nested', 'data');
    const database = await createDatabase({ dataDir });
    t.after(() => database.close());
    assert.equal(database.dialect, 'sqlite');
    assert.ok(existsSync(join(dataDir, 'gateway.sqlite')));
    const mode = await sql<{ journal_mode: string }>`pragma journal_mode`.execute(database.db);
    assert.equal(mode.rows[0]?.journal_mode, 'wal');
    const fk = await sql<{ foreign_keys: bigint }>`pragma foreign_keys`.execute(database.db);
    assert.equal(fk.rows[0]?.foreign_keys, 1n);
    const busy = await sql<{ timeout: bigint }>`pragma busy_timeout`.execute(database.db);
    assert.ok((busy.rows[0]?.timeout ?? 0n) > 0n);
    await database.ping();
  });

  it('refuses a DATABASE_URL that is not PostgreSQL, without echoing its password', async () => {
    await assert.rejects(
      createDatabase({ databaseUrl: 'mysql://u:hunter2@db/x', dataDir: tmpdir() }),
      (error: Error) => /postgres:\/\//.test(error.message) && !error.message.includes('hunter2'),
    );
  });

  it('refuses a schema name that would need quoting', async () => {
    await assert.rejects(
      createDatabase({ databaseUrl: 'postgres://127.0.0.1:1/x', dataDir: tmpdir(), schema: 'a"; drop' }),
      /invalid PostgreSQL schema name/,
    );
  });

  it('fails with a clear message when PostgreSQL is unreachable', async () => {
    await assert.rejects(
      createDatabase({ databaseUrl: 'postgres://nobody:secret@127.0.0.1:1/none', dataDir: tmpdir() }),
      (error: Error) => /PostgreSQL not reachable at/.test(error.message) && !error.message.includes('secret'),
    );
  });

  it('close is idempotent', async (t) => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gateway-db-close-'));
    t.after(() => rmSync(dataDir, { recursive: true, force: true }));
    const database = await createDatabase({ dataDir });
    await database.close();
    await database.close();
  });
});

describe('toIsoTimestamp', () => {
  it('normalises every input to fixed-width UTC ISO, so strings sort as time', () => {
    assert.equal(toIsoTimestamp('2025-03-01T01:30:00+02:00'), '2025-02-28T23:30:00.000Z');
    assert.equal(toIsoTimestamp(0), '1970-01-01T00:00:00.000Z');
    assert.throws(() => toIsoTimestamp('not a date'), RangeError);
    assert.throws(() => toIsoTimestamp(Date.UTC(10000, 0, 1)), RangeError);
  });
});

describeEachDialect('migrations', ({ dialect, fresh, open }) => {
  it('creates every table and applies nothing the second time', async () => {
    const database = await open();
    const tables = (await database.db.introspection.getTables()).map((t) => t.name).sort();
    for (const table of TABLES) assert.ok(tables.includes(table), `${table} missing from ${tables.join(', ')}`);
    assert.deepEqual(await database.migrate(), []);
    const again = await open();
    assert.deepEqual(await again.migrate(), []);
  });

  it('runs concurrently from two Database instances: each migration applied exactly once', async () => {
    const storage = await fresh();
    const [a, b] = await Promise.all([storage.open({ migrate: false }), storage.open({ migrate: false })]);
    const [appliedA, appliedB] = await Promise.all([a!.migrate(), b!.migrate()]);
    assert.deepEqual([...appliedA, ...appliedB].sort(), ALL_MIGRATIONS);
    await a!.ping();
    await b!.ping();
  });

  it('runs concurrently from two processes: each migration applied exactly once', async () => {
    const storage = await fresh();
    const results = await runInProcesses<{ applied: string[] }>(storage, [{ kind: 'migrate' }, { kind: 'migrate' }]);
    assert.deepEqual(results.flatMap((r) => r.applied).sort(), ALL_MIGRATIONS);
    const database = await storage.open();
    assert.deepEqual(await database.migrate(), []);
  });

  it('round-trips 64-bit integers exactly', async () => {
    const database = await open();
    const big = 2n ** 62n + 12345n;
    const at = toIsoTimestamp(new Date());
    await database.db
      .insertInto('api_keys')
      .values({ id: `big-${dialect}`, name: 'n', key_hash: 'f'.repeat(63) + '0', role: 'user', budget_micros: big, created_at: at, updated_at: at })
      .execute();
    const row = await database.db.selectFrom('api_keys').select('budget_micros').where('id', '=', `big-${dialect}`).executeTakeFirstOrThrow();
    assert.equal(row.budget_micros, big);
    assert.equal(typeof row.budget_micros, 'bigint');
  });

  it('0007 to 0009: the jobs’ fal id index holds only set ids; the label index stays full, which reservations of older and current code both name', async () => {
    const database = await open();
    const defs =
      dialect === 'postgres'
        ? (await sql<{ name: string; def: string }>`select indexname as name, indexdef as def from pg_indexes where schemaname = current_schema() and indexname in ('requests_key_client_id', 'upstream_jobs_fal_request_id')`.execute(database.db)).rows
        : (await sql<{ name: string; def: string }>`select name, sql as def from sqlite_master where type = 'index' and name = 'requests_key_client_id'`.execute(database.db)).rows;
    const byName = new Map(defs.map((d) => [d.name, d.def.toLowerCase().replace(/[()"]/g, '')]));
    assert.match(byName.get('requests_key_client_id') ?? '', /unique index .*key_id, client_request_id$/, 'full: no predicate');
    if (dialect === 'postgres') {
      assert.match(byName.get('upstream_jobs_fal_request_id') ?? '', /unique index .*where fal_request_id is not null/);
      const constraints = await sql<{ n: bigint }>`select count(*) as n from pg_constraint where conrelid = 'upstream_jobs'::regclass and contype = 'u'`.execute(database.db);
      assert.equal(constraints.rows[0]?.n, 0n, 'the full UNIQUE constraint is gone');
    }
    const at = toIsoTimestamp(new Date());
    const key = `k-0007-${randomBytes(4).toString('hex')}`;
    await database.db.insertInto('api_keys').values({ id: key, name: 'n', key_hash: randomBytes(32).toString('hex'), role: 'user', budget_micros: null, created_at: at, updated_at: at }).execute();
    const row = (id: string, label: string | null) => ({ id, client_request_id: label, key_id: key, model: 'm', endpoint: 'e', end_user: null, status: 'reserved' as const, reserved_micros: 1n, idempotency_key: null, created_at: at });
    await database.db.insertInto('requests').values([row(`${key}-a`, null), row(`${key}-b`, null), row(`${key}-c`, 'label')]).execute();
    await assert.rejects(database.db.insertInto('requests').values(row(`${key}-d`, 'label')).execute(), /unique|UNIQUE/);
    // A reused label inserts nothing under either conflict target: code older than 0007 names the index without the predicate.
    for (const target of [sql`(key_id, client_request_id)`, sql`(key_id, client_request_id) where client_request_id is not null`]) {
      const r = await sql`insert into requests (id, client_request_id, key_id, model, endpoint, status, reserved_micros, created_at)
        values (${`${key}-e`}, 'label', ${key}, 'm', 'e', 'reserved', 1, ${at}) on conflict ${target} do nothing`.execute(database.db);
      assert.equal(Number(r.numAffectedRows ?? 0n), 0);
    }
    const job = (id: string, fal: string | null) => ({ id, request_id: `${key}-a`, endpoint: 'e', status: 'submitting' as const, fal_request_id: fal, created_at: at });
    await database.db.insertInto('upstream_jobs').values([job(`${key}-a/0`, null), job(`${key}-a/1`, null), job(`${key}-a/2`, 'fal-1')]).execute();
    await assert.rejects(database.db.insertInto('upstream_jobs').values(job(`${key}-a/3`, 'fal-1')).execute(), /unique|UNIQUE/);
  });

  if (dialect === 'postgres') {
    it('without a schema option, migrates the connection\'s current schema', async (t) => {
      // The search_path comes from the URL here, as a deployment might set it;
      // the factory must follow it rather than assume "public".
      const name = `t_${randomBytes(6).toString('hex')}`;
      const admin = new pg.Client({ connectionString: POSTGRES_URL });
      await admin.connect();
      await admin.query(`create schema ${name}`);
      t.after(async () => {
        await admin.query(`drop schema if exists ${name} cascade`);
        await admin.end();
      });
      const url = new URL(POSTGRES_URL);
      url.searchParams.set('options', `-c search_path=${name}`);
      const database = await createDatabase({ databaseUrl: url.toString(), dataDir: tmpdir() });
      try {
        assert.equal(database.schema, name);
        const tables = await database.db.introspection.getTables({ withInternalKyselyTables: true });
        assert.ok(tables.some((table) => table.name === 'requests' && table.schema === name));
        assert.ok(tables.some((table) => table.name === 'kysely_migration' && table.schema === name));
        assert.deepEqual(await database.migrate(), []);
      } finally {
        await database.close();
      }
    });

    it('keeps each schema to itself: tables live in the configured schema', async () => {
      const storage = await fresh();
      const database = await storage.open();
      const result = await sql<{ n: bigint }>`
        select count(*) as n from information_schema.tables
        where table_schema = ${storage.options.schema!} and table_name in ('requests', 'kysely_migration')`.execute(database.db);
      assert.equal(result.rows[0]?.n, 2n);
    });
  }
});

/**
 * Every write of the ledger and the stores runs in `db.transaction().execute`
 * (Kysely's own transactions, on the SQLite driver of src/db/sqlite.ts or on pg).
 */
describeEachDialect('transactions', (ctx) => {
  async function keyRow(database: Database): Promise<string> {
    const id = `k_${randomBytes(6).toString('hex')}`;
    const at = toIsoTimestamp(new Date());
    await database.db
      .insertInto('api_keys')
      .values({ id, name: 't', key_hash: randomBytes(32).toString('hex'), role: 'user', budget_micros: null, rpm_limit: null, created_at: at, updated_at: at })
      .execute();
    return id;
  }

  /** Adds `amount` to the key's spent_micros `times` times in `trx`, answering the last value. */
  async function addSpent(trx: Kysely<DB>, id: string, amount: bigint, times = 1): Promise<bigint> {
    let spent = 0n;
    for (let i = 0; i < times; i++) {
      const row = await trx
        .updateTable('api_keys')
        .set((eb) => ({ spent_micros: eb('spent_micros', '+', amount) }))
        .where('id', '=', id)
        .returning('spent_micros')
        .executeTakeFirstOrThrow();
      spent = BigInt(row.spent_micros);
    }
    return spent;
  }

  async function spentOf(database: Database, id: string): Promise<bigint> {
    const row = await database.db.selectFrom('api_keys').select('spent_micros').where('id', '=', id).executeTakeFirstOrThrow();
    return BigInt(row.spent_micros);
  }

  it('commit every statement of the body and answer what it returns', async () => {
    const database = await ctx.open();
    const id = await keyRow(database);
    assert.equal(await database.db.transaction().execute((trx) => addSpent(trx, id, 5n, 3)), 15n);
    assert.equal(await spentOf(database, id), 15n);
  });

  it('roll everything back when the body throws after writing', async () => {
    const database = await ctx.open();
    const id = await keyRow(database);
    const failing = database.db.transaction().execute(async (trx) => {
      await addSpent(trx, id, 7n, 2);
      throw new Error('refused after two writes');
    });
    await assert.rejects(failing, /refused after two writes/);
    assert.equal(await spentOf(database, id), 0n);
    // The connection is usable afterwards (not left inside a transaction).
    assert.equal(await database.db.transaction().execute((trx) => addSpent(trx, id, 1n)), 1n);
  });

  it('roll everything back when a statement fails', async () => {
    const database = await ctx.open();
    const id = await keyRow(database);
    const failing = database.db.transaction().execute(async (trx) => {
      await addSpent(trx, id, 3n);
      // spent_micros >= 0 is a check constraint.
      await addSpent(trx, id, -10n);
    });
    await assert.rejects(failing, /check|constraint/i);
    assert.equal(await spentOf(database, id), 0n);
  });

  it('wait for a transaction in progress, never interleaving with it', async () => {
    const database = await ctx.open();
    const id = await keyRow(database);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const order: string[] = [];
    const first = database.db.transaction().execute(async (trx) => {
      await trx.updateTable('api_keys').set({ spent_micros: 100n }).where('id', '=', id).execute();
      order.push('first wrote');
      await held;
      order.push('first commits');
    });
    while (order.length === 0) await new Promise((r) => setImmediate(r));
    const second = database.db
      .transaction()
      .execute((trx) => addSpent(trx, id, 1n))
      .then((v) => {
        order.push('second done');
        return v;
      });
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(order, ['first wrote'], 'the second waits while the first is open');
    release();
    await first;
    // It saw the committed 100, not a value from inside the open transaction.
    assert.equal(await second, 101n);
    assert.deepEqual(order, ['first wrote', 'first commits', 'second done']);
  });

  it('run concurrent transactions one after another (on SQLite, in call order)', async () => {
    const database = await ctx.open();
    const id = await keyRow(database);
    const results = await Promise.all([1n, 2n, 3n, 4n].map((n) => database.db.transaction().execute((trx) => addSpent(trx, id, n, 2))));
    assert.equal(await spentOf(database, id), 20n);
    if (ctx.dialect === 'sqlite') assert.deepEqual(results, [2n, 6n, 12n, 20n]);
    else assert.equal(new Set(results).size, 4);
  });

  it('take turns across two Database objects on the same storage, read-then-write without a busy error', async () => {
    const [a, b] = [await ctx.open(), await ctx.open()];
    const id = await keyRow(a);
    const bump = (database: Database) =>
      database.db.transaction().execute(async (trx) => {
        const read = trx.selectFrom('api_keys').select('spent_micros').where('id', '=', id);
        // SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL needs the row lock asked for.
        const before = (await (ctx.dialect === 'postgres' ? read.forUpdate() : read).executeTakeFirstOrThrow()).spent_micros;
        await new Promise((r) => setImmediate(r));
        await trx.updateTable('api_keys').set({ spent_micros: BigInt(before) + 1n }).where('id', '=', id).execute();
      });
    await Promise.all(Array.from({ length: 10 }, (_, i) => bump(i % 2 === 0 ? a : b)));
    assert.equal(await spentOf(a, id), 10n);
  });

  it('reject once the database is closed', async () => {
    const storage = await ctx.fresh();
    const database = await storage.open();
    const id = await keyRow(database);
    await database.close();
    await assert.rejects(database.db.transaction().execute((trx) => addSpent(trx, id, 1n)));
  });
});
