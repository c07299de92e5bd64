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
  /**
   * Deletes expired leases no open request names (a dead process's row, once
   * its requests are settled): the ids they leave on closed requests are
   * only history. Answers how many went.
   */
  sweep(): Promise<number>;
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
    async sweep() {
      const now = toIsoTimestamp(clock());
      const gone = await db
        .deleteFrom('leases')
        .where('expires_at', '<=', now)
        .where((eb) => eb.not(eb.exists(eb.selectFrom('requests').select('requests.id').whereRef('requests.lease_id', '=', 'leases.id').where('requests.status', 'in', HOLDING))))
        .executeTakeFirst();
      return Number(gone.numDeletedRows);
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
  /**
   * Whether the lease is known live by this process's own clock: renewed
   * less than its expiry ago, with one renewal interval to spare. While it
   * is not, the process takes no request and reconciles nothing: other
   * processes may take its requests over (reconcile.ts), and its writes to
   * those then change nothing (ledger.ts).
   */
  valid(): boolean;
  /** Stops renewing and deletes the row. Call once the process's requests are finished. */
  release(): Promise<void>;
}

/**
 * Takes a new lease for this process and renews it every `renewMs` until
 * released. A renewal that fails (the database is down) is logged and
 * tried again at the next tick; once renewals have failed past the expiry,
 * the lease is no longer valid and that is logged as an error, once. A
 * renewal that finds the lease had lapsed is logged as an error too:
 * another process may have taken this one's requests over meanwhile.
 */
export async function holdLease(store: LeaseStore, options: { logger: Logger; renewMs?: number | undefined; expiryMs?: number | undefined; now?: () => number }): Promise<HeldLease> {
  const renewMs = options.renewMs ?? DEFAULT_LEASE_RENEW_MS;
  const expiryMs = options.expiryMs ?? DEFAULT_LEASE_EXPIRY_MS;
  const now = options.now ?? Date.now;
  const me = { id: randomUUID(), host: hostname(), pid: process.pid, expiryMs };
  let liveUntil = now() + expiryMs;
  await store.acquire(me);
  const log = options.logger.child({ lease_id: me.id });
  let expiredLogged = false;
  const valid = (): boolean => now() < liveUntil - renewMs;
  let renewing: Promise<void> | undefined;
  const tick = (): void => {
    // Counted from before the call: the row's expiry is at least this late.
    const sent = now();
    renewing ??= store
      .renew(me)
      .then((was) => {
        liveUntil = sent + expiryMs;
        if (was !== 'renewed') log.error({ was, expiry_ms: expiryMs }, 'lease: renewed a lease that had lapsed; other processes may have taken over this process’s requests, whose late writes then change nothing');
        else if (expiredLogged) log.warn('lease: renewed again; taking requests again');
        expiredLogged = false;
      })
      .catch((err: unknown) => {
        if (!valid() && !expiredLogged) {
          expiredLogged = true;
          log.error({ err, expiry_ms: expiryMs }, 'lease: renewals keep failing and the lease has expired; this process takes no new requests and reconciles nothing until a renewal succeeds; other processes may take over its open requests');
        } else log.warn({ err }, 'lease: renewal failed; trying again');
      })
      .finally(() => (renewing = undefined));
  };
  const timer = setInterval(tick, renewMs);
  timer.unref();
  let released: Promise<void> | undefined;
  return {
    id: me.id,
    valid,
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
  const leaseless = eb.and([eb(lease, 'is', null), eb(createdAt, '<', scope.createdBefore)]);
  const deadOwner = [eb(lease, 'is not', null)];
  if (own !== undefined) deadOwner.push(eb(lease, '<>', own));
  if (scope.live.length > 0) deadOwner.push(eb(lease, 'not in', [...scope.live]));
  const either = [leaseless, eb.and(deadOwner)];
  if (own !== undefined) either.push(eb.and([eb(lease, '=', own), eb(createdAt, '<', scope.ownCreatedBefore)]));
  return eb.or(either);
}
