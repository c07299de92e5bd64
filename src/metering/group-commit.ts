/**
 * Group commit for the ledger's per-request writes on PostgreSQL: while one
 * statement of a kind is on its way, the same writes of other requests
 * queue, and leave together as one statement (arrays, `unnest`), one
 * transaction and one commit. A lone request never waits: its write leaves
 * at once when nothing of its kind is in flight, so latency at low load is
 * what it was, and batches form only where writes already queue.
 *
 * Why: PostgreSQL's CPU per request is spent per statement (waking a
 * backend, bind, execute, commit), not per row. Measured with
 * `npx tsx bench/probes/ledger-pool.ts --pools=5:solo,5 --rounds=5`
 * (docs/LEDGER-COST.md, "Group commit"): 1.358 ms of PostgreSQL CPU per
 * request with every write alone, 0.481 grouped, and 1,613 against 783
 * requests a second per process.
 * test/metering/ledger-pg.test.ts fails when twenty requests written at
 * once take more than two statements per kind of write.
 *
 * Guarantees kept: each caller's write is committed before its promise
 * resolves, exactly as when it went alone; a batch is one statement, so it
 * commits whole or not at all. When the server refuses a batch (an error
 * with a SQLSTATE: nothing of it committed), each of its writes is sent
 * again alone, so one write's error (a duplicate id, a deadlock) reaches its
 * caller only. An error without a SQLSTATE (a lost connection), or one that
 * ends the session (a shutdown, a proxy's lost server connection: the commit
 * may or may not have happened), reaches every caller of the batch, as it
 * would have reached each of them alone, and nothing is sent again. A batch
 * naming a key twice (`keysOf`) is sent one write at a time, each answered
 * by its own statement: one statement would write the row once and answer
 * both.
 */
import pg from 'pg';

export interface GroupOptions<I, O> {
  /** The writes of `items` as one statement; one answer per item, in order. */
  many(items: readonly I[]): Promise<O[]>;
  /** One write alone: a batch of one, and each item of a refused batch. */
  one(item: I): Promise<O>;
  /** Most writes in one statement. */
  maxBatch: number;
  /** The rows an item writes: a batch naming one twice leaves one write at a time. */
  keysOf?: ((item: I) => readonly string[]) | undefined;
}

export type Group<I, O> = (item: I) => Promise<O>;

interface Waiting<I, O> {
  item: I;
  resolve: (out: O) => void;
  reject: (err: unknown) => void;
}

export function createGroup<I, O>(options: GroupOptions<I, O>): Group<I, O> {
  const queue: Array<Waiting<I, O>> = [];
  /** One statement of a kind at a time: writes queue while it is on its way. */
  let busy = false;

  /** One after another, each caller answered by its own write: the kind keeps its one connection. */
  const eachAlone = async (batch: Array<Waiting<I, O>>): Promise<void> => {
    for (const w of batch) await options.one(w.item).then(w.resolve, w.reject);
  };

  const send = async (batch: Array<Waiting<I, O>>): Promise<void> => {
    try {
      if (batch.length === 1 || repeats(batch.map((w) => w.item), options.keysOf)) {
        await eachAlone(batch);
        return;
      }
      let outs: O[];
      try {
        outs = await options.many(batch.map((w) => w.item));
      } catch (error) {
        if (refusedWhole(error)) await eachAlone(batch);
        else for (const w of batch) w.reject(error);
        return;
      }
      batch.forEach((w, i) => w.resolve(outs[i]!));
    } finally {
      busy = false;
      pump();
    }
  };

  const pump = (): void => {
    if (busy || queue.length === 0) return;
    busy = true;
    void send(queue.splice(0, options.maxBatch));
  };

  return (item) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ item, resolve, reject });
      pump();
    });
}

function repeats<I>(items: readonly I[], keysOf: GroupOptions<I, unknown>['keysOf']): boolean {
  if (keysOf === undefined) return false;
  const keys = items.flatMap(keysOf);
  return new Set(keys).size !== keys.length;
}

/**
 * SQLSTATEs of errors that end the session, which say nothing of a commit:
 * a backend terminated or a server shutting down (57P…) may be past it, and
 * a proxy such as PgBouncer answers 08… when it lost the server under a
 * statement, not knowing whether it committed.
 */
const SESSION_ENDED = /^(08|57P)/;

/** The server refused the statement and the session goes on: it rolled back whole, so its writes may be sent again. */
export function refusedWhole(error: unknown): boolean {
  if (!(error instanceof pg.DatabaseError)) return false;
  return !SESSION_ENDED.test(error.code ?? '') && error.severity !== 'FATAL' && error.severity !== 'PANIC';
}
