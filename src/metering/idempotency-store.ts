/**
 * `Idempotency-Key` records, scoped per API key. The first request with a key
 * claims it by inserting the row; every later one (in this process or
 * another) reads what the first left: still running, its stored response, or
 * a different body. A running claim names the lease of the process that
 * will answer it (leases.ts): when that lease is dead, or the claim was
 * detached because its caller left, nobody will store an answer, and the
 * request's ledger row says what became of it (src/images/recover-answer.ts).
 */
import type { Kysely } from 'kysely';
import type { Database } from '../db/database.js';
import type { DB } from '../db/schema.js';
import { systemClock, toIsoTimestamp, toNumber, type Clock } from '../db/values.js';

export interface BeginInput {
  keyId: string;
  idemKey: string;
  /** A hash of the parsed body, so equal JSON with different spacing counts as equal. */
  bodyHash: string;
  /** Our request id for the request that would do the work. */
  requestId: string;
  ttlS: number;
  /** The claiming process's lease; undefined for a process without one. */
  leaseId?: string | undefined;
}

/** A running claim, as a later request with the same key finds it. */
export interface RunningClaim {
  requestId: string;
  /** The lease of the process that will store its answer; null when no process will. */
  leaseId: string | null;
}

export type BeginResult =
  /** This caller owns the key: do the work, then `complete` (or `abandon`). */
  | { state: 'new' }
  /** Another request with this key is still at work (or was, until its process died): wait, or look it up. */
  | ({ state: 'running' } & RunningClaim)
  /** Answer with the stored response. */
  | { state: 'done'; statusCode: number; response: unknown; requestId: string }
  /** Same key, different body. */
  | { state: 'mismatch' };

export interface IdempotencyStore {
  begin(input: BeginInput): Promise<BeginResult>;
  /**
   * Stores the response. With `requestId`, only the claim that request made
   * is completed (a claim that expired and was taken over is left alone).
   * Returns false if there was no running claim to complete.
   */
  complete(input: {
    keyId: string;
    idemKey: string;
    statusCode: number;
    response: unknown;
    requestId?: string | undefined;
  }): Promise<boolean>;
  /**
   * Drops a running claim whose outcome must not be replayed (a validation
   * failure), so a corrected retry with the same key starts afresh.
   */
  abandon(input: { keyId: string; idemKey: string; requestId?: string | undefined }): Promise<boolean>;
  /**
   * Marks a running claim as one no process will answer (its caller left
   * before an answer was written): its request's ledger row decides what a
   * retry gets. Returns false if there was no such running claim.
   */
  detach(input: { keyId: string; idemKey: string; requestId: string }): Promise<boolean>;
  /**
   * Hands a running claim whose request never reached the ledger (its process
   * died first) to a new request, if it still names `fromRequestId`: of
   * several retries racing for it, exactly one wins.
   */
  takeOver(input: { keyId: string; idemKey: string; fromRequestId: string; requestId: string; leaseId?: string | undefined; ttlS: number }): Promise<boolean>;
  /** Deletes expired records; returns how many. */
  purgeExpired(): Promise<number>;
}

const MAX_ATTEMPTS = 5;

export function createIdempotencyStore(database: Database, options: { clock?: Clock | undefined } = {}): IdempotencyStore {
  const db = database.db;
  const clock = options.clock ?? systemClock;

  return {
    begin: (input) => begin(db, clock, input),

    async detach({ keyId, idemKey, requestId }) {
      const done = await db
        .updateTable('idempotency')
        .set({ lease_id: null })
        .where('key_id', '=', keyId)
        .where('idem_key', '=', idemKey)
        .where('state', '=', 'running')
        .where('request_id', '=', requestId)
        .returning('key_id')
        .executeTakeFirst();
      return done !== undefined;
    },

    async takeOver({ keyId, idemKey, fromRequestId, requestId, leaseId, ttlS }) {
      const nowDate = clock();
      const taken = await db
        .updateTable('idempotency')
        .set({ request_id: requestId, lease_id: leaseId ?? null, created_at: toIsoTimestamp(nowDate), expires_at: toIsoTimestamp(nowDate.getTime() + ttlS * 1000) })
        .where('key_id', '=', keyId)
        .where('idem_key', '=', idemKey)
        .where('state', '=', 'running')
        .where('request_id', '=', fromRequestId)
        .returning('key_id')
        .executeTakeFirst();
      return taken !== undefined;
    },

    async complete({ keyId, idemKey, statusCode, response, requestId }) {
      let q = db
        .updateTable('idempotency')
        .set({ state: 'done', status_code: statusCode, response_json: JSON.stringify(response ?? null) })
        .where('key_id', '=', keyId)
        .where('idem_key', '=', idemKey)
        .where('state', '=', 'running');
      if (requestId !== undefined) q = q.where('request_id', '=', requestId);
      const done = await q.returning('key_id').executeTakeFirst();
      return done !== undefined;
    },

    async abandon({ keyId, idemKey, requestId }) {
      let q = db
        .deleteFrom('idempotency')
        .where('key_id', '=', keyId)
        .where('idem_key', '=', idemKey)
        .where('state', '=', 'running');
      if (requestId !== undefined) q = q.where('request_id', '=', requestId);
      const gone = await q.returning('key_id').executeTakeFirst();
      return gone !== undefined;
    },

    async purgeExpired() {
      const result = await db
        .deleteFrom('idempotency')
        .where('expires_at', '<=', toIsoTimestamp(clock()))
        .executeTakeFirst();
      return toNumber(result.numDeletedRows);
    },
  };
}

/** `IdempotencyStore.begin`: claims the key, or answers what its owner left. */
async function begin(db: Kysely<DB>, clock: Clock, { keyId, idemKey, bodyHash, requestId, ttlS, leaseId }: BeginInput): Promise<BeginResult> {
  if (!(ttlS > 0)) throw new RangeError('ttlS must be positive');
  // Each pass either claims the key or reads a row that someone else
  // claimed; it repeats only when that row vanished or expired under us.
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const nowDate = clock();
    const now = toIsoTimestamp(nowDate);
    const expiresAt = toIsoTimestamp(nowDate.getTime() + ttlS * 1000);
    const claimed = await db
      .insertInto('idempotency')
      .values({
        key_id: keyId,
        idem_key: idemKey,
        body_hash: bodyHash,
        state: 'running',
        request_id: requestId,
        created_at: now,
        expires_at: expiresAt,
        lease_id: leaseId ?? null,
      })
      .onConflict((oc) => oc.columns(['key_id', 'idem_key']).doNothing())
      .returning('key_id')
      .executeTakeFirst();
    if (claimed) return { state: 'new' };

    const row = await db
      .selectFrom('idempotency')
      .selectAll()
      .where('key_id', '=', keyId)
      .where('idem_key', '=', idemKey)
      .executeTakeFirst();
    if (!row) continue;

    if (row.expires_at <= now) {
      // Take over an expired record with a compare-and-set on what we
      // read, so of two requests racing for it exactly one wins.
      const taken = await db
        .updateTable('idempotency')
        .set({
          body_hash: bodyHash,
          state: 'running',
          status_code: null,
          response_json: null,
          request_id: requestId,
          created_at: now,
          expires_at: expiresAt,
          lease_id: leaseId ?? null,
        })
        .where('key_id', '=', keyId)
        .where('idem_key', '=', idemKey)
        .where('expires_at', '=', row.expires_at)
        .where('request_id', '=', row.request_id)
        .returning('key_id')
        .executeTakeFirst();
      if (taken) return { state: 'new' };
      continue;
    }

    if (row.body_hash !== bodyHash) return { state: 'mismatch' };
    if (row.state === 'running') return { state: 'running', requestId: row.request_id, leaseId: row.lease_id ?? null };
    return {
      state: 'done',
      statusCode: toNumber(row.status_code),
      response: row.response_json === null ? null : (JSON.parse(row.response_json) as unknown),
      requestId: row.request_id,
    };
  }
  throw new Error(`idempotency key ${JSON.stringify(idemKey)} kept changing under us; try again`);
}
