/**
 * The `leases` table (the rule they serve is in leases.ts). Every write is
 * one Kysely statement on the database, on SQLite and PostgreSQL alike; times
 * are the ledger's fixed-width ISO strings, so they compare as text.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Expression, ExpressionBuilder, SqlBool } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../db/database.js';
import { systemClock, toIsoTimestamp, type Clock } from '../db/values.js';
import { HOLDING } from './ledger-statements.js';
import { DEFAULT_LEASE_EXPIRY_MS, DEFAULT_LEASE_RENEW_MS, type LeaseRow, type ReconcileScope } from './leases.js';

export interface LeaseRecord extends LeaseRow {
  host: string;
  pid: number;
  startedAt: string;
  heartbeatAt: string;
}

export interface LeaseStore {
  /** Writes a new lease, live for `expiryMs`. */
  acquire(input: { id: string; host: string; pid: number; expiryMs: number }): Promise<LeaseRecord>;
  /**
   * Moves the lease's expiry to `expiryMs` from now. Answers what the row said
   * before: `lapsed` when it had already expired (other processes may have
   * reconciled this process's requests meanwhile), `missing` when it was gone
   * (it is written again).
   */
  renew(input: { id: string; host: string; pid: number; expiryMs: number }): Promise<'renewed' | 'lapsed' | 'missing'>;
  /** Deletes the lease: its open requests become anyone's to reconcile at once. */
  release(id: string): Promise<void>;
  list(): Promise<LeaseRecord[]>;
  /** Which of these leases own a request still holding its reservation. */
  ownersOfOpenRequests(leaseIds: readonly string[]): Promise<Set<string>>;
}

export function createLeaseStore(database: Database, options: { clock?: Clock | undefined } = {}): LeaseStore {
  const db = database.db;
  const clock = options.clock ?? systemClock;
  const stamps = (expiryMs: number) => {
    const now = clock();
    return { now: toIsoTimestamp(now), expires: toIsoTimestamp(now.getTime() + expiryMs) };
  };
  const store: LeaseStore = {
    async acquire({ id, host, pid, expiryMs }) {
      const { now, expires } = stamps(expiryMs);
      await db.insertInto('leases').values({ id, host, pid, started_at: now, heartbeat_at: now, expires_at: expires }).execute();
      return { id, host, pid, startedAt: now, heartbeatAt: now, expiresAtMs: Date.parse(expires) };
    },
    async renew({ id, host, pid, expiryMs }) {
      const { now, expires } = stamps(expiryMs);
      return db.transaction().execute(async (trx) => {
        const before = await trx.selectFrom('leases').select('expires_at').where('id', '=', id).executeTakeFirst();
        if (!before) {
          await trx.insertInto('leases').values({ id, host, pid, started_at: now, heartbeat_at: now, expires_at: expires }).execute();
          return 'missing';
        }
        await trx.updateTable('leases').set({ heartbeat_at: now, expires_at: expires }).where('id', '=', id).execute();
        return before.expires_at <= now ? 'lapsed' : 'renewed';
      });
    },
    async release(id) {
      await db.deleteFrom('leases').where('id', '=', id).execute();
    },
    async list() {
      const rows = await db.selectFrom('leases').selectAll().orderBy('started_at').orderBy('id').execute();
      return rows.map((r) => ({ id: r.id, host: r.host, pid: Number(r.pid), startedAt: r.started_at, heartbeatAt: r.heartbeat_at, expiresAtMs: Date.parse(r.expires_at) }));
    },
    async ownersOfOpenRequests(leaseIds) {
      if (leaseIds.length === 0) return new Set();
      const rows = await db.selectFrom('requests').select('lease_id').distinct().where('status', 'in', HOLDING).where('lease_id', 'in', [...leaseIds]).execute();
      return new Set(rows.flatMap((r) => (r.lease_id === null ? [] : [r.lease_id])));
    },
  };
  return store;
}

export interface HeldLease {
  readonly id: string;
  /** Stops renewing and deletes the row. Call once the process's requests are finished. */
  release(): Promise<void>;
}

/**
 * Takes a new lease for this process and renews it every `renewMs` until
 * released. A renewal that fails (the database is down) is logged and
 * tried again at the next tick; one that finds the lease had lapsed is
 * logged as an error, since another process may have settled this one's
 * requests while it was still working on them.
 */
export async function holdLease(store: LeaseStore, options: { logger: Logger; renewMs?: number | undefined; expiryMs?: number | undefined }): Promise<HeldLease> {
  const renewMs = options.renewMs ?? DEFAULT_LEASE_RENEW_MS;
  const expiryMs = options.expiryMs ?? DEFAULT_LEASE_EXPIRY_MS;
  const me = { id: randomUUID(), host: hostname(), pid: process.pid, expiryMs };
  await store.acquire(me);
  const log = options.logger.child({ lease_id: me.id });
  let renewing: Promise<void> | undefined;
  const tick = (): void => {
    renewing ??= store
      .renew(me)
      .then((was) => {
        if (was !== 'renewed') log.error({ was, expiry_ms: expiryMs }, 'lease: renewed a lease that had lapsed; other processes may have reconciled this process’s requests');
      })
      .catch((err: unknown) => log.warn({ err }, 'lease: renewal failed; trying again'))
      .finally(() => (renewing = undefined));
  };
  const timer = setInterval(tick, renewMs);
  timer.unref();
  let released: Promise<void> | undefined;
  return {
    id: me.id,
    release() {
      released ??= (async () => {
        clearInterval(timer);
        await renewing;
        await store.release(me.id);
      })();
      return released;
    },
  };
}

/**
 * `mayReconcile` (leases.ts) as a WHERE clause over a request's lease and a
 * creation time (the request's, or its job's), for the ledger's lists.
 */
export function inScope(eb: ExpressionBuilder<any, any>, scope: ReconcileScope, lease: string, createdAt: string): Expression<SqlBool> {
  const own = scope.ownLeaseId;
  const ownOrNone = own === undefined ? eb(lease, 'is', null) : eb.or([eb(lease, 'is', null), eb(lease, '=', own)]);
  const deadOwner = [eb(lease, 'is not', null)];
  if (own !== undefined) deadOwner.push(eb(lease, '<>', own));
  if (scope.live.length > 0) deadOwner.push(eb(lease, 'not in', [...scope.live]));
  return eb.or([eb.and([eb(createdAt, '<', scope.createdBefore), ownOrNone]), eb.and(deadOwner)]);
}
