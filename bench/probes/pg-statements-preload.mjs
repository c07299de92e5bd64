/**
 * Loaded into a service process with `node --import` by
 * bench/probes/pg-statements.ts: counts every statement the process sends
 * to PostgreSQL through node-postgres (Kysely's dialect included), by its
 * text, with the time from send to answer, and the server backends its
 * connections run on. The totals are written to $PG_STATEMENTS_FILE every
 * 100 ms (atomically, by rename), cumulative since start.
 */
import { renameSync, writeFileSync } from 'node:fs';
import pg from 'pg';

const file = process.env.PG_STATEMENTS_FILE;
/** @type {Map<string, { calls: number; ms: number; errors: number; named: number }>} */
const stats = new Map();
const backends = new Set();
const query = pg.Client.prototype.query;

pg.Client.prototype.query = function (config, values, callback) {
  const text = typeof config === 'string' ? config : config?.text;
  if (this.processID) backends.add(this.processID);
  if (typeof text !== 'string') return query.call(this, config, values, callback);
  let rec = stats.get(text);
  if (!rec) stats.set(text, (rec = { calls: 0, ms: 0, errors: 0, named: 0 }));
  rec.calls++;
  if (typeof config === 'object' && config.name) rec.named++;
  const t0 = performance.now();
  const out = query.call(this, config, values, callback);
  if (out && typeof out.then === 'function') {
    out.then(
      () => (rec.ms += performance.now() - t0),
      () => {
        rec.ms += performance.now() - t0;
        rec.errors++;
      },
    );
  }
  return out;
};

if (file) {
  setInterval(() => {
    const body = JSON.stringify({ at: Date.now(), backends: [...backends], statements: [...stats].map(([text, s]) => ({ text, ...s })) });
    writeFileSync(`${file}.tmp`, body);
    renameSync(`${file}.tmp`, file);
  }, 100).unref();
}
