/**
 * Who may reconcile what. Each service process holds a lease (a row in
 * `leases`, renewed every `renewMs`, expiring `expiryMs` after its last
 * renewal; lease-store.ts) and every request it takes names that lease
 * (`requests.lease_id`). Reconciliation then follows one rule:
 *
 * - a request owned by a lease that has expired, or whose row is gone (its
 *   process shut down, or crashed and stopped renewing), is touched at once,
 *   by any process: nobody else can be working on it;
 * - a request of the process's own lease is touched once older than
 *   `olderThanMs` (RECONCILE_AFTER_MS): its own deadline has passed, so only
 *   a leftover can still be open (a caller that left with a job running).
 *   A process that knows which requests it is working on (the image
 *   service's in-flight set) touches every other one of its own at once
 *   (`ownOlderThanMs` 0): a request it took over, or one whose caller left;
 * - a request row without a lease is touched by age alone: its owner
 *   cannot be known, so it may still be live;
 * - a request of another process's live lease is never touched.
 *
 * Expiry compares one host's clock with another's: it assumes clocks agree
 * to well within `expiryMs - renewMs` (8 s by default), as NTP keeps them.
 *
 * The ledger applies the same rule in SQL (`ReconcileScope`); `mayReconcile`
 * is its statement in code, and the ledger's tests check the two agree.
 */

export const DEFAULT_LEASE_RENEW_MS = 2_000;
export const DEFAULT_LEASE_EXPIRY_MS = 10_000;

export interface LeaseRow {
  id: string;
  expiresAtMs: number;
}

/** What one reconciliation round may touch, computed once per round. */
export interface ReconcileScope {
  /** ISO timestamp: lease-less rows created before it are touched. */
  createdBefore: string;
  /** ISO timestamp: own rows created before it are touched. */
  ownCreatedBefore: string;
  /** The reconciling process's own lease; undefined for a reconciler without one. */
  ownLeaseId: string | undefined;
  /** Leases live at the start of the round (the own lease included when live). */
  live: readonly string[];
}

export function reconcileScope(input: { ownLeaseId: string | undefined; leases: readonly LeaseRow[]; nowMs: number; olderThanMs: number; ownOlderThanMs?: number | undefined }): ReconcileScope {
  return {
    createdBefore: new Date(input.nowMs - input.olderThanMs).toISOString(),
    ownCreatedBefore: new Date(input.nowMs - (input.ownOlderThanMs ?? input.olderThanMs)).toISOString(),
    ownLeaseId: input.ownLeaseId,
    live: input.leases.filter((l) => l.expiresAtMs > input.nowMs).map((l) => l.id),
  };
}

/** The rule above, for one request (its owner's lease and when it was taken). */
export function mayReconcile(row: { leaseId: string | null; createdAt: string }, scope: ReconcileScope): boolean {
  if (row.leaseId === null) return row.createdAt < scope.createdBefore;
  if (row.leaseId === scope.ownLeaseId) return row.createdAt < scope.ownCreatedBefore;
  return !scope.live.includes(row.leaseId);
}

/**
 * When the earliest live lease of another process that owns open requests
 * expires: the moment a round should run to
 * settle them should that process be dead (a restart after a crash finds its
 * old lease still live for up to `expiryMs`).
 */
export function nextForeignExpiry(leases: readonly LeaseRow[], owners: ReadonlySet<string>, ownLeaseId: string | undefined, nowMs: number): number | undefined {
  let next: number | undefined;
  for (const l of leases) {
    if (l.id === ownLeaseId || !owners.has(l.id) || l.expiresAtMs <= nowMs) continue;
    if (next === undefined || l.expiresAtMs < next) next = l.expiresAtMs;
  }
  return next;
}
