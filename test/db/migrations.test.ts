import { it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { describeEachDialect, POSTGRES_URL } from '../helpers/databases.js';

/**
 * Migrating while other clients create, alter and drop their schemas (what
 * parallel test suites, or other apps on a shared server, do): Kysely's
 * Migrator lists every schema's tables and their columns' sequences before
 * it takes its lock, and a schema dropped or a column dropped during that
 * read fails it ("schema … does not exist", "column … does not exist").
 * src/db/migrations.ts repeats such a run.
 */
describeEachDialect('migrations beside other clients’ schema churn', ({ dialect, fresh }) => {
  if (dialect !== 'postgres') return;
  it('every fresh schema migrates while others are created, altered and dropped', async () => {
    const churn = new pg.Client({ connectionString: POSTGRES_URL });
    await churn.connect();
    let stop = false;
    let dropped = 0;
    const loop = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `t_churn_${process.pid}_${i}`;
        await churn.query(`create schema ${name}`);
        await churn.query(`create table ${name}.t (id int, c serial)`);
        await churn.query(`alter table ${name}.t drop column c`);
        await churn.query(`drop schema ${name} cascade`);
        dropped++;
        // A suite drops its schema when it ends; a few a second from each of several suites is the busy case.
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    try {
      for (let i = 0; i < 12; i++) {
        const storage = await fresh();
        const db = await storage.open();
        assert.equal(db.dialect, 'postgres');
      }
    } finally {
      stop = true;
      await loop;
      await churn.end();
    }
    assert.ok(dropped > 0, 'schemas were dropped while migrations ran');
  });
});
