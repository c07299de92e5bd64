/**
 * A transaction written once for both dialects and run the cheapest way each
 * allows. The body is a generator that yields each compiled query and gets
 * its result back:
 *
 *   function* (): Unit<boolean> {
 *     const r = yield someQuery.compile();
 *     return r.rows.length > 0;
 *   }
 *
 * On SQLite the whole body runs synchronously inside one BEGIN IMMEDIATE …
 * COMMIT on the connection (src/db/sqlite.ts, SqliteDirect): no promise per
 * statement, no Kysely executor. On PostgreSQL it runs in a Kysely
 * transaction, one await per query. Either way a throw from the body (or from
 * a query) rolls the whole transaction back and rejects.
 */
import type { CompiledQuery, Kysely, QueryResult } from 'kysely';
import type { Database } from './database.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Unit<T> = Generator<CompiledQuery, T, QueryResult<any>>;

export function runUnit<T>(database: Database, unit: () => Unit<T>): Promise<T> {
  const direct = database.sqlite;
  if (direct) {
    return direct.transaction((execute) => {
      const steps = unit();
      let step = steps.next();
      while (!step.done) step = steps.next(execute(step.value));
      return step.value;
    });
  }
  return database.db.transaction().execute((trx) => runSteps(trx, unit()));
}

/**
 * The steps of a unit on `executor` as it is (the database, or a transaction
 * already open on it), one await per query: for the few places that read a
 * unit's step outside a unit of their own.
 */
export async function runSteps<T>(executor: Pick<Kysely<unknown>, 'executeQuery'>, steps: Unit<T>): Promise<T> {
  let step = steps.next();
  while (!step.done) step = steps.next(await executor.executeQuery(step.value));
  return step.value;
}
