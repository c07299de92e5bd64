import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import pg from 'pg';
import { createDatabase, migrations, toIsoTimestamp } from '../../src/db/index.js';
import { describeEachDialect, POSTGRES_URL, runInProcesses } from '../helpers/databases.js';

const TABLES = ['api_keys', 'idempotency', 'outbox', 'requests', 'upstream_jobs'];
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
