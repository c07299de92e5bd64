import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import BetterSqlite3 from 'better-sqlite3';
import { sql } from 'kysely';
import pg from 'pg';
import { isStorageUnavailable } from '../../src/db/errors.js';
import type { Database } from '../../src/db/index.js';
import { describeEachDialect, POSTGRES_URL } from '../helpers/databases.js';

/** The error `work` fails with; the test fails if it succeeds. */
async function failure(work: () => Promise<unknown>): Promise<unknown> {
  try {
    await work();
  } catch (err) {
    return err;
  }
  assert.fail('expected the storage call to fail');
}

function shown(err: unknown): string {
  const e = err as { name?: string; code?: string; message?: string };
  return `${e.name}${e.code ? ` ${e.code}` : ''}: ${e.message}`;
}

async function scratchTable(database: Database): Promise<void> {
  await sql`create table if not exists scratch (id text primary key, v text)`.execute(database.db);
}

/**
 * Errors as the real drivers throw them: what means "storage cannot be
 * reached or cannot take work now" (a retryable 503) against what means
 * "storage answered and refused" (our 500).
 */
describeEachDialect('isStorageUnavailable on real driver errors', (ctx) => {
  it('a constraint violated or a value refused is not unavailability', async () => {
    const database = await ctx.open();
    await scratchTable(database);
    await sql`insert into scratch (id, v) values ('a', 'x')`.execute(database.db);
    const duplicate = await failure(() => sql`insert into scratch (id, v) values ('a', 'y')`.execute(database.db));
    assert.equal(isStorageUnavailable(duplicate), false, shown(duplicate));
    const syntax = await failure(() => sql`selec 1`.execute(database.db));
    assert.equal(isStorageUnavailable(syntax), false, shown(syntax));
    if (ctx.dialect === 'postgres') {
      const nul = await failure(() => sql`insert into scratch (id, v) values ('b', ${'a\u0000b'})`.execute(database.db));
      assert.equal((nul as { code?: string }).code, '22021', 'PostgreSQL refuses NUL in text');
      assert.equal(isStorageUnavailable(nul), false, shown(nul));
    }
  });

  it('a database closed under the caller is unavailability', async () => {
    const database = await (await ctx.fresh()).open();
    await database.close();
    const err = await failure(() => sql`select 1`.execute(database.db));
    assert.equal(isStorageUnavailable(err), true, shown(err));
  });

  if (ctx.dialect === 'sqlite') {
    it('SQLite: another connection holding the write lock (busy) is unavailability', async () => {
      const storage = await ctx.fresh();
      const database = await storage.open({ sqliteBusyTimeoutMs: 1 });
      await scratchTable(database);
      const other = new BetterSqlite3(join(storage.options.dataDir, 'gateway.sqlite'));
      try {
        other.exec('begin immediate');
        const err = await failure(() => sql`insert into scratch (id, v) values ('c', 'x')`.execute(database.db));
        assert.match(String((err as { code?: string }).code), /^SQLITE_BUSY/);
        assert.equal(isStorageUnavailable(err), true, shown(err));
      } finally {
        other.close();
      }
    });

    it('SQLite: a full disk is unavailability', async () => {
      const database = await (await ctx.fresh()).open();
      await scratchTable(database);
      const pages = await sql<{ page_count: number | bigint }>`pragma page_count`.execute(database.db);
      // No room beyond what the file holds now: the next page the insert needs is a full disk to SQLite.
      await sql.raw(`pragma max_page_count = ${Number(pages.rows[0]!.page_count)}`).execute(database.db);
      const err = await failure(() => sql`insert into scratch (id, v) values ('d', ${'x'.repeat(1 << 20)})`.execute(database.db));
      assert.equal((err as { code?: string }).code, 'SQLITE_FULL');
      assert.equal(isStorageUnavailable(err), true, shown(err));
    });
  }

  if (ctx.dialect === 'postgres') {
    it('PostgreSQL: the connection killed by the server mid-query is unavailability, not a crash', async () => {
      const database = await ctx.open({ poolSize: 1 });
      const err = await failure(() =>
        database.db.connection().execute(async (conn) => {
          const pid = (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(conn)).rows[0]!.pid;
          const sleeping = sql`select pg_sleep(30)`.execute(conn).then(
            () => undefined,
            (e: unknown) => e,
          );
          const admin = new pg.Client({ connectionString: POSTGRES_URL });
          await admin.connect();
          try {
            await admin.query('select pg_terminate_backend($1)', [pid]);
          } finally {
            await admin.end();
          }
          const lost = await sleeping;
          // Still checked out while the server closes the socket: the client's 'error' event must not crash the process.
          await new Promise((r) => setTimeout(r, 300));
          throw lost;
        }),
      );
      assert.equal(isStorageUnavailable(err), true, shown(err));
    });

    it('PostgreSQL: no free connection within the connect timeout is unavailability', async () => {
      const database = await ctx.open({ poolSize: 1, connectTimeoutMs: 200 });
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      const holding = database.db.connection().execute(async () => held);
      try {
        // The one connection is taken by `holding` once this select can no longer get it.
        await new Promise((r) => setTimeout(r, 50));
        const err = await failure(() => sql`select 1`.execute(database.db));
        assert.equal(isStorageUnavailable(err), true, shown(err));
      } finally {
        release();
        await holding;
      }
    });
  }
});

describe('isStorageUnavailable: wrapped errors and a refused connection', () => {
  it('pg: connection refused is unavailability', async () => {
    // Port 1 on loopback: nothing listens there.
    const pool = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/test', connectionTimeoutMillis: 5_000 });
    try {
      const err = await failure(() => pool.query('select 1'));
      assert.equal(isStorageUnavailable(err), true, shown(err));
    } finally {
      await pool.end();
    }
  });

  it('errors that wrap or aggregate an unavailable one', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED ::1:5432'), { code: 'ECONNREFUSED' });
    assert.equal(isStorageUnavailable(new Error('ledger reserve failed', { cause: refused })), true);
    assert.equal(isStorageUnavailable(new AggregateError([new Error('x'), refused])), true);
    assert.equal(isStorageUnavailable(new Error('plain')), false);
    assert.equal(isStorageUnavailable('ECONNREFUSED'), false);
    assert.equal(isStorageUnavailable(Object.assign(new Error('not a pg state'), { code: 'EPIPEX' })), false);
  });
});
