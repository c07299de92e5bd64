/**
 * The usage ledger: one request row per caller request (reserved before fal
 * is called, settled after) and one upstream-job row per fal job.
 *
 * Every amount moves between a request row and its key row inside one
 * transaction, and every state change is a conditional UPDATE on the row's
 * current status, so a repeat (a retry, a second process reconciling the
 * same request) finds nothing to change instead of billing twice. Row locks
 * are always taken request first, key second, so concurrent settles and
 * releases cannot deadlock.
 *
 * Reservations: a request in `reserved` or `submitted` holds `reserved_micros`
 * on its key. Settling, releasing or orphaning gives the hold back; settling
 * adds the charge to `spent_micros`. An orphan (submit sent, answer lost)
 * keeps its row for reporting but not its hold: the caller is not charged
 * for what we cannot show was delivered, unless reconciliation later finds
 * the job and settles it.
 */
import {
  sql,
  type Expression,
  type ExpressionBuilder,
  type Insertable,
  type Kysely,
  type Selectable,
  type SqlBool,
  type Transaction,
} from 'kysely';
import type { Database } from '../db/database.js';
import { prepared } from '../db/prepared.js';
import { runSteps, runUnit, type Unit } from '../db/unit.js';
import type { DB, JobStatus, RequestStatus, RequestsTable, UpstreamJobsTable } from '../db/schema.js';
import { systemClock, toBigInt, toIsoTimestamp, toNumber, type Clock, type TimeInput } from '../db/values.js';
import { enqueueOutboxEventUnit, type OutboxEventInput } from './outbox-store.js';

export interface ReserveInput {
  requestId: string;
  keyId: string;
  model: string;
  endpoint: string;
  user?: string | null | undefined;
  /** Opaque JSON of what the charge depends on besides the images. */
  pricing?: string | null | undefined;
  maxChargeMicros: bigint;
  idempotencyKey?: string | null | undefined;
}

export type ReserveResult =
  | { ok: true }
  | {
      ok: false;
      reason: 'insufficient_quota';
      budgetMicros: bigint;
      spentMicros: bigint;
      reservedMicros: bigint;
    }
  /** A caller-chosen request id (x-request-id) that already names a request; nothing was held. */
  | { ok: false; reason: 'request_id_taken' };

export interface RequestRecord {
  id: string;
  keyId: string;
  model: string;
  endpoint: string;
  user: string | null;
  pricing: string | null;
  status: RequestStatus;
  /** The maximum charge held when the request was reserved (kept after the hold ends). */
  reservedMicros: bigint;
  chargeMicros: bigint;
  credits: bigint;
  upstreamCostMicros: bigint;
  images: number;
  errorCode: string | null;
  idempotencyKey: string | null;
  createdAt: string;
  /** When the request was settled, released or failed. */
  settledAt: string | null;
}

export interface JobRecord {
  falRequestId: string;
  requestId: string;
  endpoint: string;
  status: JobStatus;
  images: number;
  pixels: number;
  unitsEstimate: string | null;
  unitsFal: string | null;
  upstreamCostMicros: bigint;
  createdAt: string;
  completedAt: string | null;
}

export interface RequestWithJobs extends RequestRecord {
  jobs: JobRecord[];
}

export interface CompleteJobInput {
  falRequestId: string;
  images: number;
  pixels: number;
  /** Our estimate of fal's billed quantity, as a decimal. */
  unitsEstimate: string | number | bigint;
  /** fal's `x-fal-billable-units`, when it sent one. */
  unitsFal?: string | number | bigint | null | undefined;
  upstreamCostMicros: bigint;
}

export interface CompleteJobResult {
  job: JobRecord;
  /** False when the job was already completed (a repeat). */
  changed: boolean;
  /** fal reported a quantity that is not numerically equal to our estimate. */
  unitsMismatch: boolean;
}

export interface SettleInput {
  requestId: string;
  chargeMicros: bigint;
  credits: bigint | number;
  upstreamCostMicros: bigint;
  images: number;
  /** The billing event, written in the same transaction as the charge. */
  outboxEvent?: SettleOutboxEvent | undefined;
}

export interface SettleOutboxEvent extends Omit<OutboxEventInput, 'keyId' | 'payload'> {
  /**
   * The event body, or a function that makes it from the request row as
   * settled: inside the transaction, so the event carries exactly the
   * `settled_at`, key and charge the ledger holds, with no second read.
   */
  payload: unknown;
}

export interface SettleResult {
  /** True when this call settled the request; false when it was already closed (nothing changed). */
  settled: boolean;
  request: RequestRecord;
}

export interface ReleaseInput {
  requestId: string;
  status: 'released' | 'failed';
  errorCode?: string | null | undefined;
}

export interface ReleaseResult {
  released: boolean;
  request: RequestRecord;
}

/**
 * Time ranges apply to settlement time, not request time: a charge is
 * committed at settlement, so a period that has been exported can never gain
 * a row later (a request started before midnight and settled after it counts
 * in the new day, instead of in a day already invoiced).
 */
export interface UsageFilter {
  /** Inclusive, on settlement time. */
  from?: TimeInput | undefined;
  /** Exclusive, on settlement time. */
  to?: TimeInput | undefined;
  model?: string | undefined;
  keyId?: string | undefined;
}

export type UsageGroupBy = 'day' | 'model' | 'key';

export interface UsageTotals {
  requests: number;
  images: number;
  chargeMicros: bigint;
  credits: bigint;
  upstreamCostMicros: bigint;
}

export interface UsageRow extends UsageTotals {
  /** The UTC day (YYYY-MM-DD), the model id or the key id. */
  group: string;
}

export interface UsageReport {
  rows: UsageRow[];
  totals: UsageTotals;
}

/**
 * One settled request, as billing exports carry it. The keys are the
 * documented export columns, in `EXPORT_COLUMNS` order.
 */
export interface ExportRow {
  /** Our request id (also the `x-request-id` the caller saw). */
  request_id: string;
  key_id: string;
  /** The public model id the caller asked for. */
  model: string;
  /** The fal endpoint id that served it. */
  endpoint: string;
  /** The caller's OpenAI `user` field, if sent. */
  user: string | null;
  /** Images delivered (and billed). */
  images: number;
  /** What the caller is billed, in millionths of a US dollar. */
  charge_micros: bigint;
  /** The same charge in aimlapi credits. */
  credits: bigint;
  /** What fal billed us for the request's jobs, in millionths of a US dollar. */
  upstream_cost_micros: bigint;
  /** When the request was reserved, ISO-8601 UTC. */
  created_at: string;
  /** When the charge was committed, ISO-8601 UTC; export ranges apply to this. */
  settled_at: string;
}

export const EXPORT_COLUMNS = [
  'request_id',
  'key_id',
  'model',
  'endpoint',
  'user',
  'images',
  'charge_micros',
  'credits',
  'upstream_cost_micros',
  'created_at',
  'settled_at',
] as const satisfies readonly (keyof ExportRow)[];

export interface ExportFilter extends UsageFilter {
  /** Rows fetched per query; memory stays bounded by one batch. */
  batchSize?: number | undefined;
}

export interface UnitsDisagreements {
  count: number;
  /** The most recent ones, newest first. */
  jobs: JobRecord[];
}

export interface Ledger {
  reserve(input: ReserveInput): Promise<ReserveResult>;
  /** Records a fal job as soon as submit answers. Repeating the same id is a no-op. */
  recordSubmit(input: { requestId: string; falRequestId: string; endpoint: string }): Promise<JobRecord>;
  completeJob(input: CompleteJobInput): Promise<CompleteJobResult>;
  failJob(input: { falRequestId: string; status: 'failed' | 'cancelled' }): Promise<{ changed: boolean; job: JobRecord }>;
  /** A second fal job created for the same work (a retried submit); recorded, never charged to the caller. */
  markDuplicate(input: { requestId: string; falRequestId: string; endpoint: string }): Promise<JobRecord>;
  settle(input: SettleInput): Promise<SettleResult>;
  /** completeJob for each job, then settle, in one transaction. */
  settleJobs(input: { jobs: readonly CompleteJobInput[]; settle: SettleInput }): Promise<{ jobs: CompleteJobResult[]; settlement: SettleResult }>;
  release(input: ReleaseInput): Promise<ReleaseResult>;
  /** Submit outcome unknown: the hold is returned, the row kept and reported. Returns false if the request was not open. */
  markOrphaned(requestId: string): Promise<boolean>;
  /** Requests still holding a reservation, with their jobs, oldest first: what start-up reconciliation works through. */
  listOpen(options?: { createdBefore?: TimeInput | undefined }): Promise<RequestWithJobs[]>;
  listOrphaned(): Promise<RequestWithJobs[]>;
  getRequest(requestId: string): Promise<RequestWithJobs | null>;
  /** Settled requests only, by settlement time. */
  usage(filter?: UsageFilter & { groupBy?: UsageGroupBy | undefined }): Promise<UsageReport>;
  /** Settled requests ordered by (settled_at, request_id), fetched in keyset-paginated batches. */
  exportRows(filter?: ExportFilter): AsyncIterable<ExportRow>;
  unitsDisagreements(options?: { limit?: number | undefined }): Promise<UnitsDisagreements>;
}

export class UnknownKeyError extends Error {
  constructor(readonly keyId: string) {
    super(`no key row for key id ${JSON.stringify(keyId)}; static keys need keys.ensureStatic() first`);
    this.name = 'UnknownKeyError';
  }
}

export class UnknownRequestError extends Error {
  constructor(readonly requestId: string) {
    super(`no request ${JSON.stringify(requestId)} in the ledger`);
    this.name = 'UnknownRequestError';
  }
}

export class UnknownJobError extends Error {
  constructor(readonly falRequestId: string) {
    super(`no upstream job ${JSON.stringify(falRequestId)} in the ledger`);
    this.name = 'UnknownJobError';
  }
}

const HOLDING: RequestStatus[] = ['reserved', 'submitted'];
const ID_CHUNK = 500;

export interface LedgerOptions {
  clock?: Clock | undefined;
  /** Default export batch size. */
  exportBatchSize?: number | undefined;
}

export function createLedger(database: Database, options: LedgerOptions = {}): Ledger {
  const db = database.db;
  const clock = options.clock ?? systemClock;
  const now = (): string => toIsoTimestamp(clock());
  const defaultBatch = options.exportBatchSize ?? 1000;

  function* requestOrThrowU(requestId: string): Unit<RequestRecord> {
    const row = (yield db.selectFrom('requests').selectAll().where('id', '=', requestId).compile()).rows[0] as Selectable<RequestsTable> | undefined;
    if (!row) throw new UnknownRequestError(requestId);
    return toRequest(row);
  }

  function* jobOrThrowU(falRequestId: string): Unit<JobRecord> {
    const row = (yield db.selectFrom('upstream_jobs').selectAll().where('fal_request_id', '=', falRequestId).compile()).rows[0] as
      | Selectable<UpstreamJobsTable>
      | undefined;
    if (!row) throw new UnknownJobError(falRequestId);
    return toJob(row);
  }

  /** The same reads, awaited on `q` (the database or an open transaction) outside a unit. */
  const requestOrThrow = (q: Kysely<DB>, requestId: string): Promise<RequestRecord> => runSteps(q, requestOrThrowU(requestId));
  const jobOrThrow = (q: Kysely<DB>, falRequestId: string): Promise<JobRecord> => runSteps(q, jobOrThrowU(falRequestId));

  async function withJobs(rows: Selectable<RequestsTable>[]): Promise<RequestWithJobs[]> {
    const byRequest = new Map<string, JobRecord[]>();
    for (let i = 0; i < rows.length; i += ID_CHUNK) {
      const ids = rows.slice(i, i + ID_CHUNK).map((r) => r.id);
      const jobs = await db
        .selectFrom('upstream_jobs')
        .selectAll()
        .where('request_id', 'in', ids)
        .orderBy('created_at')
        .orderBy('fal_request_id')
        .execute();
      for (const job of jobs) {
        const list = byRequest.get(job.request_id) ?? [];
        list.push(toJob(job));
        byRequest.set(job.request_id, list);
      }
    }
    return rows.map((r) => ({ ...toRequest(r), jobs: byRequest.get(r.id) ?? [] }));
  }

  function settledIn(eb: ExpressionBuilder<DB, 'requests'>, filter: UsageFilter): Expression<SqlBool> {
    const conditions: Expression<SqlBool>[] = [eb('status', '=', 'settled')];
    if (filter.from !== undefined) conditions.push(eb('settled_at', '>=', toIsoTimestamp(filter.from)));
    if (filter.to !== undefined) conditions.push(eb('settled_at', '<', toIsoTimestamp(filter.to)));
    if (filter.model !== undefined) conditions.push(eb('model', '=', filter.model));
    if (filter.keyId !== undefined) conditions.push(eb('key_id', '=', filter.keyId));
    return eb.and(conditions);
  }

  // The statements every image request runs, compiled once (src/db/prepared.ts).
  const holdQ = prepared((q: Kysely<DB>, p: { amount: bigint; keyId: string }) =>
    // The budget check and the hold are one statement: under concurrency
    // PostgreSQL re-evaluates the WHERE against the row as committed by
    // whoever held its lock, and SQLite writers are serialised, so no two
    // reservations can both see the same headroom.
    q
      .updateTable('api_keys')
      .set({ reserved_micros: sql<bigint>`reserved_micros + ${p.amount}` })
      .where('id', '=', p.keyId)
      .where((eb) => eb.or([eb('budget_micros', 'is', null), eb(sql<bigint>`spent_micros + reserved_micros + ${p.amount}`, '<=', eb.ref('budget_micros'))]))
      .returning('id'),
  );
  const insertRequestQ = prepared((q: Kysely<DB>, p: Insertable<RequestsTable>) =>
    q
      .insertInto('requests')
      .values({
        id: p.id,
        key_id: p.key_id,
        model: p.model,
        endpoint: p.endpoint,
        end_user: p.end_user,
        pricing_json: p.pricing_json,
        status: 'reserved',
        reserved_micros: p.reserved_micros,
        idempotency_key: p.idempotency_key,
        created_at: p.created_at,
      })
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id'),
  );
  const insertJobQ = prepared((q: Kysely<DB>, p: { falRequestId: string; requestId: string; endpoint: string; at: string }) =>
    q
      .insertInto('upstream_jobs')
      .values({ fal_request_id: p.falRequestId, request_id: p.requestId, endpoint: p.endpoint, status: 'submitted', created_at: p.at })
      .onConflict((oc) => oc.column('fal_request_id').doNothing())
      .returningAll(),
  );
  const markSubmittedQ = prepared((q: Kysely<DB>, p: { requestId: string }) =>
    // Only a request still holding its reservation moves on; a late record
    // for a closed or orphaned request keeps the job visible without reopening it.
    q.updateTable('requests').set({ status: 'submitted' }).where('id', '=', p.requestId).where('status', '=', 'reserved'),
  );
  type JobValues = { images: number; pixels: number; unitsEstimate: string; unitsFal: string | null; cost: bigint; at: string; falRequestId: string };
  const completeJobQ = prepared((q: Kysely<DB>, p: JobValues) =>
    // A result from fal is a fact and overrides an earlier failed or
    // cancelled guess (a cancel can lose the race with completion).
    q
      .updateTable('upstream_jobs')
      .set({ images: p.images, pixels: p.pixels, units_estimate: p.unitsEstimate, units_fal: p.unitsFal, upstream_cost_micros: p.cost, completed_at: p.at, status: 'completed' })
      .where('fal_request_id', '=', p.falRequestId)
      .where('status', 'in', ['submitted', 'failed', 'cancelled'])
      .returningAll(),
  );
  const completeDuplicateQ = prepared((q: Kysely<DB>, p: JobValues) =>
    // A duplicate that ran still cost us: record it, keep it marked.
    q
      .updateTable('upstream_jobs')
      .set({ images: p.images, pixels: p.pixels, units_estimate: p.unitsEstimate, units_fal: p.unitsFal, upstream_cost_micros: p.cost, completed_at: p.at })
      .where('fal_request_id', '=', p.falRequestId)
      .where('status', '=', 'duplicate')
      .where('completed_at', 'is', null)
      .returningAll(),
  );
  type SettleValues = { requestId: string; charge: bigint; credits: bigint; cost: bigint; images: number; at: string };
  const settleHoldingQ = prepared((q: Kysely<DB>, p: SettleValues) =>
    q
      .updateTable('requests')
      .set({ status: 'settled', charge_micros: p.charge, credits: p.credits, upstream_cost_micros: p.cost, images: p.images, error_code: null, settled_at: p.at })
      .where('id', '=', p.requestId)
      .where('status', 'in', HOLDING)
      .returningAll(),
  );
  const settleOrphanQ = prepared((q: Kysely<DB>, p: SettleValues) =>
    q
      .updateTable('requests')
      .set({ status: 'settled', charge_micros: p.charge, credits: p.credits, upstream_cost_micros: p.cost, images: p.images, error_code: null, settled_at: p.at })
      .where('id', '=', p.requestId)
      .where('status', '=', 'orphaned')
      .returningAll(),
  );
  const chargeKeyQ = prepared((q: Kysely<DB>, p: { keyId: string; hold: bigint; charge: bigint }) =>
    q
      .updateTable('api_keys')
      .set({ reserved_micros: sql<bigint>`reserved_micros - ${p.hold}`, spent_micros: sql<bigint>`spent_micros + ${p.charge}` })
      .where('id', '=', p.keyId),
  );

  function* completeJobIn(input: CompleteJobInput): Unit<CompleteJobResult> {
    const values: JobValues = {
      falRequestId: input.falRequestId,
      images: toNumber(input.images),
      pixels: toNumber(input.pixels),
      unitsEstimate: canonicalDecimal(input.unitsEstimate),
      unitsFal: input.unitsFal === null || input.unitsFal === undefined ? null : canonicalDecimal(input.unitsFal),
      cost: toBigInt(input.upstreamCostMicros),
      at: now(),
    };
    const row = ((yield completeJobQ.bind(db, values)).rows[0] ?? (yield completeDuplicateQ.bind(db, values)).rows[0]) as Selectable<UpstreamJobsTable> | undefined;
    // Unchanged (a repeat): report the row as it stands.
    const job = row ? toJob(row) : yield* jobOrThrowU(input.falRequestId);
    return {
      job,
      changed: row !== undefined,
      unitsMismatch: job.unitsFal !== null && job.unitsEstimate !== null && job.unitsFal !== job.unitsEstimate,
    };
  }

  function* settleIn(input: SettleInput): Unit<SettleResult> {
    const charge = toBigInt(input.chargeMicros);
    if (charge < 0n) throw new RangeError('chargeMicros must not be negative');
    const values: SettleValues = {
      requestId: input.requestId,
      charge,
      credits: toBigInt(input.credits),
      cost: toBigInt(input.upstreamCostMicros),
      images: toNumber(input.images),
      at: now(),
    };
    let hold: bigint;
    let row = (yield settleHoldingQ.bind(db, values)).rows[0] as Selectable<RequestsTable> | undefined;
    if (row) {
      hold = toBigInt(row.reserved_micros);
    } else {
      row = (yield settleOrphanQ.bind(db, values)).rows[0] as Selectable<RequestsTable> | undefined;
      if (!row) return { settled: false, request: yield* requestOrThrowU(input.requestId) };
      // An orphan gave its hold back when it was orphaned.
      hold = 0n;
    }
    // The row as settled: the key update below does not touch it.
    const request = toRequest(row);
    // The key row is updated before the outbox insert on purpose: its row
    // lock orders concurrent settles of one key, so outbox sequence
    // numbers of a key are assigned in commit order and per-key delivery
    // order cannot be overtaken by a transaction that committed later.
    yield chargeKeyQ.bind(db, { keyId: request.keyId, hold, charge });
    if (input.outboxEvent) {
      const { eventId, type, payload } = input.outboxEvent;
      const body: unknown = typeof payload === 'function' ? (payload as (r: RequestRecord) => unknown)(request) : payload;
      yield* enqueueOutboxEventUnit(db, { eventId, type, payload: body, keyId: request.keyId }, clock);
    }
    return { settled: true, request };
  }

  return {
    async reserve(input) {
      const amount = input.maxChargeMicros;
      if (amount < 0n) throw new RangeError('maxChargeMicros must not be negative');
      /** Thrown, not returned, so the request row inserted first is rolled back with the transaction. */
      class Refused {
        constructor(readonly result: ReserveResult) {}
      }
      return runUnit(database, function* (): Unit<ReserveResult> {
        // The request row first, the key row last: on PostgreSQL the key's
        // row lock is then held only from the hold to the commit, and every
        // request of one key queues on that lock, so its length bounds a
        // key's throughput.
        const inserted = (
          yield insertRequestQ.bind(db, {
            id: input.requestId,
            key_id: input.keyId,
            model: input.model,
            endpoint: input.endpoint,
            end_user: input.user ?? null,
            pricing_json: input.pricing ?? null,
            status: 'reserved',
            reserved_micros: amount,
            idempotency_key: input.idempotencyKey ?? null,
            created_at: now(),
          })
        ).rows[0];
        if (!inserted) return { ok: false, reason: 'request_id_taken' };
        const held = (yield holdQ.bind(db, { amount, keyId: input.keyId })).rows[0];
        if (held) return { ok: true };
        const key = (yield db.selectFrom('api_keys').select(['budget_micros', 'spent_micros', 'reserved_micros']).where('id', '=', input.keyId).compile()).rows[0] as
          | { budget_micros: bigint | null; spent_micros: bigint; reserved_micros: bigint }
          | undefined;
        if (!key) throw new UnknownKeyError(input.keyId);
        throw new Refused({
          ok: false,
          reason: 'insufficient_quota',
          budgetMicros: toBigInt(key.budget_micros ?? 0n),
          spentMicros: toBigInt(key.spent_micros),
          reservedMicros: toBigInt(key.reserved_micros),
        });
      }).catch(async (err: unknown) => {
        if (err instanceof Refused) return err.result;
        // A key with no row fails the insert above on its foreign key, in
        // each dialect's own words; say what it means.
        if (!(err instanceof UnknownKeyError)) {
          const key = await db.selectFrom('api_keys').select('id').where('id', '=', input.keyId).executeTakeFirst().catch(() => null);
          if (key === undefined) throw new UnknownKeyError(input.keyId);
        }
        throw err;
      });
    },

    async recordSubmit({ requestId, falRequestId, endpoint }) {
      return runUnit(database, function* (): Unit<JobRecord> {
        const inserted = (yield insertJobQ.bind(db, { falRequestId, requestId, endpoint, at: now() })).rows[0] as Selectable<UpstreamJobsTable> | undefined;
        if (!inserted) {
          const existing = yield* jobOrThrowU(falRequestId);
          if (existing.requestId !== requestId) {
            throw new Error(`fal request ${falRequestId} is already recorded for request ${existing.requestId}, not ${requestId}`);
          }
          return existing;
        }
        yield markSubmittedQ.bind(db, { requestId });
        return toJob(inserted);
      });
    },

    async completeJob(input) {
      return runUnit(database, () => completeJobIn(input));
    },

    async failJob({ falRequestId, status }) {
      const changed = await db
        .updateTable('upstream_jobs')
        .set({ status, completed_at: now() })
        .where('fal_request_id', '=', falRequestId)
        .where('status', '=', 'submitted')
        .returning('fal_request_id')
        .executeTakeFirst();
      return { changed: changed !== undefined, job: await jobOrThrow(db, falRequestId) };
    },

    async markDuplicate({ requestId, falRequestId, endpoint }) {
      await db
        .insertInto('upstream_jobs')
        .values({ fal_request_id: falRequestId, request_id: requestId, endpoint, status: 'duplicate', created_at: now() })
        .onConflict((oc) =>
          oc
            .column('fal_request_id')
            .doUpdateSet({ status: 'duplicate' })
            .where('upstream_jobs.status', '=', 'submitted')
            .where('upstream_jobs.request_id', '=', requestId),
        )
        .execute();
      return jobOrThrow(db, falRequestId);
    },

    async settle(input) {
      return runUnit(database, () => settleIn(input));
    },

    async settleJobs({ jobs, settle }) {
      // One transaction for the whole close of a request: the jobs' rows and
      // the charge commit together, and the request pays for one commit, not one per job plus one.
      return runUnit(database, function* () {
        const completed: CompleteJobResult[] = [];
        for (const job of jobs) completed.push(yield* completeJobIn(job));
        return { jobs: completed, settlement: yield* settleIn(settle) };
      });
    },

    async release({ requestId, status, errorCode }) {
      return db.transaction().execute(async (trx): Promise<ReleaseResult> => {
        const closedAt = now();
        const fromHolding = await trx
          .updateTable('requests')
          .set({ status, error_code: errorCode ?? null, settled_at: closedAt })
          .where('id', '=', requestId)
          .where('status', 'in', HOLDING)
          .returning(['key_id', 'reserved_micros'])
          .executeTakeFirst();
        if (fromHolding) {
          await returnHold(trx, fromHolding.key_id, toBigInt(fromHolding.reserved_micros));
          return { released: true, request: await requestOrThrow(trx, requestId) };
        }
        // An orphan resolved as not billed: close it; its hold is already back.
        const fromOrphan = await trx
          .updateTable('requests')
          .set({ status, error_code: errorCode ?? null, settled_at: closedAt })
          .where('id', '=', requestId)
          .where('status', '=', 'orphaned')
          .returning('id')
          .executeTakeFirst();
        return { released: fromOrphan !== undefined, request: await requestOrThrow(trx, requestId) };
      });
    },

    async markOrphaned(requestId) {
      return db.transaction().execute(async (trx) => {
        const row = await trx
          .updateTable('requests')
          .set({ status: 'orphaned', error_code: 'orphaned' })
          .where('id', '=', requestId)
          .where('status', 'in', HOLDING)
          .returning(['key_id', 'reserved_micros'])
          .executeTakeFirst();
        if (!row) {
          await requestOrThrow(trx, requestId);
          return false;
        }
        await returnHold(trx, row.key_id, toBigInt(row.reserved_micros));
        return true;
      });
    },

    async listOpen(opts = {}) {
      let q = db.selectFrom('requests').selectAll().where('status', 'in', HOLDING);
      if (opts.createdBefore !== undefined) q = q.where('created_at', '<', toIsoTimestamp(opts.createdBefore));
      return withJobs(await q.orderBy('created_at').orderBy('id').execute());
    },

    async listOrphaned() {
      const rows = await db
        .selectFrom('requests')
        .selectAll()
        .where('status', '=', 'orphaned')
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      return withJobs(rows);
    },

    async getRequest(requestId) {
      const row = await db.selectFrom('requests').selectAll().where('id', '=', requestId).executeTakeFirst();
      if (!row) return null;
      const [out] = await withJobs([row]);
      return out ?? null;
    },

    async usage(filter = {}) {
      const aggregates = [
        sql<bigint>`count(*)`.as('requests'),
        sql<bigint>`cast(coalesce(sum(images), 0) as bigint)`.as('images'),
        sql<bigint>`cast(coalesce(sum(charge_micros), 0) as bigint)`.as('charge_micros'),
        sql<bigint>`cast(coalesce(sum(credits), 0) as bigint)`.as('credits'),
        sql<bigint>`cast(coalesce(sum(upstream_cost_micros), 0) as bigint)`.as('upstream_cost_micros'),
      ] as const;
      const base = db.selectFrom('requests').where((eb) => settledIn(eb, filter));

      if (filter.groupBy === undefined) {
        const row = await base.select([...aggregates]).executeTakeFirstOrThrow();
        return { rows: [], totals: toTotals(row) };
      }
      // settled_at is a fixed-width UTC ISO string: its first ten characters
      // are the UTC day on both dialects.
      const group =
        filter.groupBy === 'day'
          ? sql<string>`substr(settled_at, 1, 10)`
          : filter.groupBy === 'model'
            ? sql<string>`${sql.ref('model')}`
            : sql<string>`${sql.ref('key_id')}`;
      const grouped = await base
        .select([group.as('grp'), ...aggregates])
        .groupBy(group)
        .execute();
      // Sorted here, by code unit, because PostgreSQL would order text by its
      // collation and SQLite by bytes: one order for both.
      const rows = grouped
        .map((r) => ({ group: String(r.grp), ...toTotals(r) }))
        .sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0));
      const totals = rows.reduce<UsageTotals>(
        (t, r) => ({
          requests: t.requests + r.requests,
          images: t.images + r.images,
          chargeMicros: t.chargeMicros + r.chargeMicros,
          credits: t.credits + r.credits,
          upstreamCostMicros: t.upstreamCostMicros + r.upstreamCostMicros,
        }),
        { requests: 0, images: 0, chargeMicros: 0n, credits: 0n, upstreamCostMicros: 0n },
      );
      return { rows, totals };
    },

    exportRows(filter = {}) {
      const batchSize = Math.max(1, Math.trunc(filter.batchSize ?? defaultBatch));
      return {
        async *[Symbol.asyncIterator]() {
          let after: { settledAt: string; id: string } | undefined;
          for (;;) {
            let q = db.selectFrom('requests').where((eb) => settledIn(eb, filter));
            if (after) {
              const { settledAt, id } = after;
              q = q.where((eb) =>
                eb.or([eb('settled_at', '>', settledAt), eb.and([eb('settled_at', '=', settledAt), eb('id', '>', id)])]),
              );
            }
            const batch = await q.selectAll().orderBy('settled_at').orderBy('id').limit(batchSize).execute();
            for (const row of batch) yield toExportRow(row);
            const last = batch.at(-1);
            if (batch.length < batchSize || !last) return;
            after = { settledAt: last.settled_at ?? '', id: last.id };
          }
        },
      };
    },

    async unitsDisagreements(opts = {}) {
      // Canonical decimals (see canonicalDecimal) make string inequality numeric inequality.
      const differs = db
        .selectFrom('upstream_jobs')
        .where('units_fal', 'is not', null)
        .where('units_estimate', 'is not', null)
        .whereRef('units_fal', '<>', 'units_estimate');
      const count = await differs.select(sql<bigint>`count(*)`.as('n')).executeTakeFirstOrThrow();
      const jobs = await differs
        .selectAll()
        .orderBy('completed_at', 'desc')
        .orderBy('fal_request_id', 'desc')
        .limit(Math.max(0, Math.trunc(opts.limit ?? 100)))
        .execute();
      return { count: toNumber(count.n), jobs: jobs.map(toJob) };
    },
  };
}

async function returnHold(trx: Transaction<DB>, keyId: string, hold: bigint): Promise<void> {
  await trx
    .updateTable('api_keys')
    .set({ reserved_micros: sql<bigint>`reserved_micros - ${hold}` })
    .where('id', '=', keyId)
    .execute();
}

function toRequest(row: Selectable<RequestsTable>): RequestRecord {
  return {
    id: row.id,
    keyId: row.key_id,
    model: row.model,
    endpoint: row.endpoint,
    user: row.end_user,
    pricing: row.pricing_json ?? null,
    status: row.status,
    reservedMicros: toBigInt(row.reserved_micros),
    chargeMicros: toBigInt(row.charge_micros),
    credits: toBigInt(row.credits),
    upstreamCostMicros: toBigInt(row.upstream_cost_micros),
    images: toNumber(row.images),
    errorCode: row.error_code,
    idempotencyKey: row.idempotency_key,
    createdAt: row.created_at,
    settledAt: row.settled_at,
  };
}

function toJob(row: Selectable<UpstreamJobsTable>): JobRecord {
  return {
    falRequestId: row.fal_request_id,
    requestId: row.request_id,
    endpoint: row.endpoint,
    status: row.status,
    images: toNumber(row.images),
    pixels: toNumber(row.pixels),
    unitsEstimate: row.units_estimate,
    unitsFal: row.units_fal,
    upstreamCostMicros: toBigInt(row.upstream_cost_micros),
    createdAt: row.created_at,
    completedAt: row.completed_at,
  };
}

function toTotals(row: {
  requests: unknown;
  images: unknown;
  charge_micros: unknown;
  credits: unknown;
  upstream_cost_micros: unknown;
}): UsageTotals {
  return {
    requests: toNumber(row.requests),
    images: toNumber(row.images),
    chargeMicros: toBigInt(row.charge_micros),
    credits: toBigInt(row.credits),
    upstreamCostMicros: toBigInt(row.upstream_cost_micros),
  };
}

function toExportRow(row: Selectable<RequestsTable>): ExportRow {
  return {
    request_id: row.id,
    key_id: row.key_id,
    model: row.model,
    endpoint: row.endpoint,
    user: row.end_user,
    images: toNumber(row.images),
    charge_micros: toBigInt(row.charge_micros),
    credits: toBigInt(row.credits),
    upstream_cost_micros: toBigInt(row.upstream_cost_micros),
    created_at: row.created_at,
    settled_at: row.settled_at ?? '',
  };
}

const DECIMAL = /^([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
const MAX_EXPONENT = 1000;

/**
 * Canonical form for the unit quantities fal reports (`x-fal-billable-units`
 * may be fractional) and the ones we estimate. Stored canonical, SQL string
 * equality is numeric equality: "1", "1.0", "01" and "1e0" all become "1".
 */
export function canonicalDecimal(input: string | number | bigint): string {
  if (typeof input === 'bigint') return input.toString();
  if (typeof input === 'number' && !Number.isFinite(input)) throw new RangeError(`not a finite decimal: ${input}`);
  const text = String(input).trim();
  const m = DECIMAL.exec(text);
  const intPart = m?.[2] ?? '';
  const fracPart = m?.[3] ?? '';
  if (!m || intPart.length + fracPart.length === 0) throw new RangeError(`not a decimal: ${JSON.stringify(text)}`);
  const exponent = Number(m[4] ?? '0');
  if (Math.abs(exponent) > MAX_EXPONENT) throw new RangeError(`decimal exponent out of range: ${text}`);

  // value = digits × 10^-scale
  let digits = (intPart + fracPart).replace(/^0+/, '');
  let scale = fracPart.length - exponent;
  if (digits === '') return '0';
  while (scale > 0 && digits.endsWith('0')) {
    digits = digits.slice(0, -1);
    scale -= 1;
  }
  let out: string;
  if (scale <= 0) {
    out = digits + '0'.repeat(-scale);
  } else {
    const padded = digits.padStart(scale + 1, '0');
    out = `${padded.slice(0, padded.length - scale)}.${padded.slice(padded.length - scale)}`;
  }
  return m[1] === '-' ? `-${out}` : out;
}

export function decimalsEqual(a: string | number | bigint, b: string | number | bigint): boolean {
  return canonicalDecimal(a) === canonicalDecimal(b);
}
