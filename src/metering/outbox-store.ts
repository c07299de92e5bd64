/**
 * The billing-webhook outbox. Events are written in the same transaction as
 * the charge they describe (see `Ledger.settle`), so an event exists exactly
 * when its charge does; delivery reads them from here, at least once, in
 * order per key.
 */
import { sql, type Kysely, type Selectable } from 'kysely';
import type { Database } from '../db/database.js';
import type { DB, OutboxTable } from '../db/schema.js';
import { systemClock, toBigInt, toIsoTimestamp, toNumber, type Clock, type TimeInput } from '../db/values.js';

export interface OutboxEventInput {
  /** Stable id: a receiver de-duplicates on it, so a redelivery must repeat it. */
  eventId: string;
  keyId: string;
  type: string;
  payload: unknown;
}

export interface OutboxEvent {
  seq: bigint;
  eventId: string;
  keyId: string;
  type: string;
  payload: unknown;
  createdAt: string;
  /** Delivery attempts started, this one included once claimed. */
  attempts: number;
  nextAttemptAt: string;
  deliveredAt: string | null;
  lastError: string | null;
}

export interface OutboxStore {
  /** Adds an event inside the caller's transaction; false if its id was already there. */
  enqueue(trx: Kysely<DB>, event: OutboxEventInput): Promise<boolean>;
  /**
   * Claims up to `limit` due events for delivery: for each key only its oldest
   * undelivered event, and only when due. A claim is a lease: the event is not
   * handed out again (here or in another process) until `leaseMs` passes
   * without `markDelivered`/`markFailed`, after which it is retried with the
   * same id.
   */
  claimDue(limit: number, now?: TimeInput): Promise<OutboxEvent[]>;
  markDelivered(seq: bigint | number): Promise<void>;
  markFailed(seq: bigint | number, error: string, nextAttemptAt: TimeInput): Promise<void>;
  /** How many events are not yet delivered. */
  pending(): Promise<number>;
  get(eventId: string): Promise<OutboxEvent | null>;
}

export interface OutboxStoreOptions {
  clock?: Clock | undefined;
  /** How long a claimed event stays with its claimer (default 60 s). */
  leaseMs?: number | undefined;
}

const MAX_ERROR_LENGTH = 2000;

export async function enqueueOutboxEvent(trx: Kysely<DB>, event: OutboxEventInput, clock: Clock = systemClock): Promise<boolean> {
  const inserted = await insertOutboxEvent(trx, event, clock).executeTakeFirst();
  return inserted !== undefined;
}

function insertOutboxEvent(q: Kysely<DB>, event: OutboxEventInput, clock: Clock) {
  const at = toIsoTimestamp(clock());
  return q
    .insertInto('outbox')
    .values({
      event_id: event.eventId,
      key_id: event.keyId,
      type: event.type,
      payload_json: JSON.stringify(event.payload, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
      created_at: at,
      next_attempt_at: at,
    })
    .onConflict((oc) => oc.column('event_id').doNothing())
    .returning('seq');
}

export function createOutboxStore(database: Database, options: OutboxStoreOptions = {}): OutboxStore {
  const db = database.db;
  const clock = options.clock ?? systemClock;
  const leaseMs = options.leaseMs ?? 60_000;

  return {
    enqueue(trx, event) {
      return enqueueOutboxEvent(trx, event, clock);
    },

    claimDue: (limit, now) => claimDue(db, limit, now === undefined ? clock() : new Date(now), leaseMs),

    async markDelivered(seq) {
      await db
        .updateTable('outbox')
        .set({ delivered_at: toIsoTimestamp(clock()), last_error: null })
        .where('seq', '=', toBigInt(seq))
        .where('delivered_at', 'is', null)
        .execute();
    },

    async markFailed(seq, error, nextAttemptAt) {
      await db
        .updateTable('outbox')
        .set({ last_error: error.slice(0, MAX_ERROR_LENGTH), next_attempt_at: toIsoTimestamp(nextAttemptAt) })
        .where('seq', '=', toBigInt(seq))
        .where('delivered_at', 'is', null)
        .execute();
    },

    async pending() {
      const row = await db
        .selectFrom('outbox')
        .select(sql<bigint>`count(*)`.as('n'))
        .where('delivered_at', 'is', null)
        .executeTakeFirstOrThrow();
      return toNumber(row.n);
    },

    async get(eventId) {
      const row = await db.selectFrom('outbox').selectAll().where('event_id', '=', eventId).executeTakeFirst();
      return row ? toEvent(row) : null;
    },
  };
}

/** `OutboxStore.claimDue`: each key's undelivered head, leased by compare-and-set. */
async function claimDue(db: Kysely<DB>, limit: number, nowDate: Date, leaseMs: number): Promise<OutboxEvent[]> {
  const now = toIsoTimestamp(nowDate);
  const leaseUntil = toIsoTimestamp(nowDate.getTime() + leaseMs);
  const heads = await db
    .selectFrom('outbox as o')
    .select(['o.seq', 'o.next_attempt_at'])
    .where('o.delivered_at', 'is', null)
    .where('o.next_attempt_at', '<=', now)
    .where(({ not, exists, selectFrom }) =>
      not(
        exists(
          selectFrom('outbox as p')
            .select(sql<number>`1`.as('one'))
            .whereRef('p.key_id', '=', 'o.key_id')
            .where('p.delivered_at', 'is', null)
            .whereRef('p.seq', '<', 'o.seq'),
        ),
      ),
    )
    .orderBy('o.seq')
    .limit(Math.max(0, Math.trunc(limit)))
    .execute();

  const claimed: OutboxEvent[] = [];
  for (const head of heads) {
    // Compare-and-set on the due time we read: of two processes that saw
    // the same head, one moves it into the future and the other updates
    // nothing.
    const row = await db
      .updateTable('outbox')
      .set({ next_attempt_at: leaseUntil, attempts: sql<bigint>`attempts + 1` })
      .where('seq', '=', head.seq)
      .where('delivered_at', 'is', null)
      .where('next_attempt_at', '=', head.next_attempt_at)
      .returningAll()
      .executeTakeFirst();
    if (row) claimed.push(toEvent(row));
  }
  return claimed;
}

function toEvent(row: Selectable<OutboxTable>): OutboxEvent {
  return {
    seq: toBigInt(row.seq),
    eventId: row.event_id,
    keyId: row.key_id,
    type: row.type,
    payload: JSON.parse(row.payload_json) as unknown,
    createdAt: row.created_at,
    attempts: toNumber(row.attempts),
    nextAttemptAt: row.next_attempt_at,
    deliveredAt: row.delivered_at,
    lastError: row.last_error,
  };
}
