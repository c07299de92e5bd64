/**
 * Queries built with Kysely once and then run many times with new values:
 * the one departure from building each query where it runs, used for the
 * statements every image request's ledger writes make
 * (src/metering/ledger-statements.ts).
 *
 * Kysely rebuilds and recompiles a query on every call: an operation tree,
 * then a visitor pass to SQL. Measured on the ledger's three per-request
 * writes (reserve, recordSubmit, settleJobs; SQLite, synchronous=NORMAL, one
 * process, the two variants interleaved over 8 rounds of 1,000 requests), CPU
 * per request's writes was 541 µs with every statement built per call and
 * 374 µs with them compiled once: building is a third of the ledger's CPU,
 * and bench/README.md's "three writes p50" has a 10 % budget.
 * test/db/prepared.test.ts fails when those writes compile a query again.
 *
 * The query is still written with Kysely's builder, so it stays one
 * definition for both dialects; only the compile step is done once per
 * dialect, on first use, with named stand-ins where the values go. Each run
 * then swaps the real values into the compiled parameter list and executes it
 * on the executor given (the database or a transaction of it).
 *
 * Values that are the same on every run (a status list, a literal) may be
 * written inline: they are compiled into the parameter list and kept as they are.
 *
 * On PostgreSQL each compiled statement is also a server-side prepared
 * statement, named after its text (`statementName`; the pool's clients send
 * it by that name, src/db/database.ts): parsed and planned once per
 * connection instead of on every run. Measured on this project's server
 * (backend CPU over 2,000 calls, docs/LEDGER-COST.md): a `select 1` costs
 * 135 to 140 µs sent unnamed, 55 µs named. A named statement's result
 * columns are fixed when it is first prepared, so one must name its
 * columns, never `*`: a migration that adds a column under a running
 * process would otherwise fail it with "cached plan must not change result type".
 */
import { createHash } from 'node:crypto';
import type { Compilable, CompiledQuery, Kysely, QueryResult } from 'kysely';

/** The server-side name of every statement compiled here, by its SQL text. */
const names = new Map<string, string>();

/**
 * The name a statement's text is prepared under on PostgreSQL, or undefined
 * for text not compiled here (built per call: sent unnamed, never kept by
 * the server). Derived from the text alone, so every process and connection
 * agrees on it and one name never stands for two texts.
 */
export function statementName(text: string): string | undefined {
  return names.get(text);
}

/** Marks where a named value goes. An object, so it can never equal a real value. */
class Slot {
  constructor(readonly name: string) {}
}

export interface Prepared<D, P, R> {
  /** Runs on `executor`: the database itself or a transaction of it (same dialect as the first run). */
  run(executor: Kysely<D>, params: P): Promise<QueryResult<R>>;
  /** The statement's text for `executor`'s dialect: what tests EXPLAIN. */
  text(executor: Kysely<D>): string;
}

/**
 * `build` receives stand-ins for the values in `P` (use them exactly where a
 * value would go; do not compute with them) and returns the query.
 */
export function prepared<D, P extends Record<string, unknown>, R>(build: (db: Kysely<D>, p: P) => Compilable<R>): Prepared<D, P, R> {
  let compiled: CompiledQuery<R> | undefined;
  /** For each compiled parameter: the name of the value it takes, or undefined for a constant. */
  let slots: Array<string | undefined> = [];
  let constants: unknown[] = [];
  const compile = (executor: Kysely<D>): CompiledQuery<R> => {
    if (compiled === undefined) {
      const stand = new Proxy({} as P, { get: (_t, key) => new Slot(String(key)) });
      compiled = build(executor, stand).compile();
      if (/\breturning \*|\bselect \*/i.test(compiled.sql)) throw new Error(`a prepared statement names its columns, never *: ${compiled.sql}`);
      names.set(compiled.sql, `gw_${createHash('sha256').update(compiled.sql).digest('hex').slice(0, 24)}`);
      slots = compiled.parameters.map((v) => (v instanceof Slot ? v.name : undefined));
      constants = compiled.parameters.map((v) => (v instanceof Slot ? undefined : v));
    }
    return compiled;
  };
  const bind = (executor: Kysely<D>, params: P): CompiledQuery<R> => {
    const compiled = compile(executor);
    const parameters = new Array<unknown>(slots.length);
    for (let i = 0; i < slots.length; i++) {
      const name = slots[i];
      if (name === undefined) parameters[i] = constants[i];
      // A missing value would otherwise go to the database as NULL.
      else if (name in params) parameters[i] = params[name];
      else throw new Error(`prepared query uses a value it was not given: ${name}`);
    }
    return { ...compiled, parameters };
  };
  return {
    async run(executor, params) {
      return executor.executeQuery<R>(bind(executor, params));
    },
    text: (executor) => compile(executor).sql,
  };
}
