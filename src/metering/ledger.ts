/**
 * The usage ledger: one request row per caller request (reserved before fal
 * is called, settled after) and one upstream-job row per fal job. Reports
 * over these rows live in src/metering/reports.ts; the writes to one job's row in
 * src/metering/ledger-jobs.ts.
 *
 * Every write is one Kysely transaction (`db.transaction().execute`), on
 * SQLite and PostgreSQL alike. Every amount moves between a request row and
 * its key row inside that transaction, and every state change is a
 * conditional UPDATE on the row's current status, so a repeat (a retry, a
 * second process reconciling the same request) finds nothing to change
 * instead of billing twice. Row locks are always taken request first, key
 * second, so concurrent settles and releases cannot deadlock.
 *
 * Reservations: a request in `reserved` or `submitted` holds `reserved_micros`
 * on its key. Settling, releasing or orphaning gives the hold back; settling
 * adds the charge to `spent_micros`. An orphan (a request reconciliation
 * found with no job row to ask fal about) keeps its row for reporting but
 * not its hold. A submit whose answer was lost is not an orphan: its job row
 * is looked for in fal's request listing (reconcile.ts) and its request
 * keeps its hold until that search ends.
 */
import type { Kysely, Transaction } from 'kysely';
import { ledgerStatements, HOLDING, type LedgerStatements } from './ledger-statements.js';
import type { Database } from '../db/database.js';
import { OPEN_JOB, type DB } from '../db/schema.js';
import { systemClock, toBigInt, toIsoTimestamp, type Clock, type TimeInput } from '../db/values.js';
import { inScope } from './lease-store.js';
import type { ReconcileScope } from './leases.js';
import { toJob, withJobs, type JobRecord, type RequestWithJobs } from './records.js';

import { adopt, markOrphaned, release, settle, type ReleaseInput, type ReleaseResult, type SettleInput, type SettleResult } from './ledger-requests.js';
import { closeJob, completeJob, jobIdFor, recordStrays, recordSubmit, type CloseJobInput, type CompleteJobInput, type CompleteJobResult } from './ledger-jobs.js';

export { jobIdFor, strayIdFor, type CloseJobInput, type CompleteJobInput, type CompleteJobResult } from './ledger-jobs.js';
export type { ReleaseInput, ReleaseResult, SettleInput, SettleOutboxEvent, SettleResult } from './ledger-requests.js';
export { UnknownJobError, UnknownRequestError, type JobRecord, type RequestRecord, type RequestWithJobs } from './records.js';

export interface ReserveInput {
  /** Ours, unique across keys (newRequestId): the row's primary key. */
  requestId: string;
  /** The caller's `x-request-id`, a label unique within `keyId`; a second request of the key with it is refused. */
  clientRequestId?: string | null | undefined;
  keyId: string;
  model: string;
  endpoint: string;
  user?: string | null | undefined;
  /** Opaque JSON of what the charge depends on besides the images. */
  pricing?: string | null | undefined;
  maxChargeMicros: bigint;
  idempotencyKey?: string | null | undefined;
  /** How many fal jobs the request makes: each gets its row (`jobIdFor`) in the reservation's transaction. */
  jobs?: number | undefined;
  /**
   * Each job's input hash, in job order (`inputHash` in lost-submits.ts):
   * written on its row, so a submit whose answer is lost can be found in
   * fal's request listing. When given, one per job.
   */
  inputHashes?: readonly string[] | undefined;
  /** Each job's upstream cost if it completes as asked (`jobEstimates`), in job order: what a give-up records when fal reports none. */
  estimates?: readonly bigint[] | undefined;
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
  /** The key already has a request labelled with this `clientRequestId`; nothing was held. */
  | { ok: false; reason: 'request_id_taken' };


export interface Ledger {
  reserve(input: ReserveInput): Promise<ReserveResult>;
  /** Adds fal's id to a job row as soon as submit answers. Repeating it is a no-op. */
  recordSubmit(input: { jobId: string; falRequestId: string }): Promise<JobRecord>;
  completeJob(input: CompleteJobInput): Promise<CompleteJobResult>;
  /** An open job reaches a final state without images; a job already final is left as it is. */
  closeJob(input: CloseJobInput): Promise<{ changed: boolean; job: JobRecord }>;
  /**
   * Jobs fal made on refused attempts of a request's submit (fal named them):
   * open `stray` rows, whose cost reconciliation records and nobody is charged.
   */
  recordStrays(input: { requestId: string; endpoint: string; falRequestIds: readonly string[] }): Promise<void>;
  /**
   * Jobs still `submitting` with no fal id, created before `createdBefore`,
   * oldest first: submits whose answer never came, which reconciliation
   * looks for in fal's request listing.
   */
  listLostSubmits(options?: ListOpenOptions): Promise<Array<JobRecord & { leaseId: string | null }>>;
  /** Which of these fal ids a job row already holds (as the id submit answered, or another id fal reported). */
  knownFalIds(falRequestIds: readonly string[]): Promise<Set<string>>;
  /** Jobs not final yet that fal named, created before `createdBefore`, oldest first: what job reconciliation asks fal about. */
  listOpenJobs(options?: ListOpenOptions): Promise<JobRecord[]>;
  settle(input: SettleInput): Promise<SettleResult>;
  /** completeJob for each job, then settle, in one transaction. */
  settleJobs(input: { jobs: readonly CompleteJobInput[]; settle: SettleInput }): Promise<{ jobs: CompleteJobResult[]; settlement: SettleResult }>;
  release(input: ReleaseInput): Promise<ReleaseResult>;
  /**
   * Takes over a request whose owner's lease expired or is gone: its
   * `lease_id` becomes `toLeaseId`, only while it still holds its
   * reservation, still names `fromLeaseId`, and that lease is not live (all
   * in one statement). True when taken; the old owner's later settle or
   * release of it then changes nothing.
   */
  adopt(input: { requestId: string; fromLeaseId: string; toLeaseId: string; at?: TimeInput | undefined }): Promise<boolean>;
  /** Submit outcome unknown: the hold is returned, the row kept and reported. Returns false if the request was not open. */
  markOrphaned(requestId: string): Promise<boolean>;
  /** Requests still holding a reservation, with their jobs, oldest first: what start-up reconciliation works through. */
  listOpen(options?: Omit<ListOpenOptions, 'limit'>): Promise<RequestWithJobs[]>;
  listOrphaned(): Promise<RequestWithJobs[]>;
  /** By our id. */
  getRequest(requestId: string): Promise<RequestWithJobs | null>;
  /** By the caller's `x-request-id`, which names a request only within its key. */
  getRequestByClientId(keyId: string, clientRequestId: string): Promise<RequestWithJobs | null>;
}

export class UnknownKeyError extends Error {
  constructor(readonly keyId: string) {
    super(`no key row for key id ${JSON.stringify(keyId)}; static keys need keys.ensureStatic() first`);
    this.name = 'UnknownKeyError';
  }
}

export interface LedgerOptions {
  clock?: Clock | undefined;
  /** The lease of the process writing (leases.ts): every request it reserves names it. */
  leaseId?: string | undefined;
}

/**
 * What reconciliation may list: rows created before `createdBefore`, or,
 * with a `scope`, the rows its lease rule allows (leases.ts), which then
 * replaces `createdBefore`.
 */
export interface ListOpenOptions {
  createdBefore?: TimeInput | undefined;
  scope?: ReconcileScope | undefined;
  limit?: number | undefined;
}

export function createLedger(database: Database, options: LedgerOptions = {}): Ledger {
  const db = database.db;
  const own = options.leaseId;
  const q = ledgerStatements(own);
  const clock = options.clock ?? systemClock;
  /** Taken inside each transaction, so on SQLite (one writer at a time) stamps follow commit order. */
  const now = (): string => toIsoTimestamp(clock());
  const write = <T>(work: (trx: Transaction<DB>) => Promise<T>): Promise<T> => db.transaction().execute(work);

  return {
    reserve: (input) => reserve(db, q, input, now, options.leaseId ?? null),
    recordSubmit: (input) => write((trx) => recordSubmit(trx, q, input)),
    completeJob: (input) =>
      write(async (trx) => {
        const out = await completeJob(trx, q, input, now());
        if (out.changed) await q.refreshCost.run(trx, { requestId: out.job.requestId });
        return out;
      }),
    closeJob: (input) =>
      write(async (trx) => {
        const out = await closeJob(trx, input, now());
        if (out.changed) await q.refreshCost.run(trx, { requestId: out.job.requestId });
        return out;
      }),
    recordStrays: (input) => write((trx) => recordStrays(trx, input, now())),
    settle: (input) => write((trx) => settle(trx, q, input, now(), clock)),
    // One transaction for the whole close of a request: the jobs' rows and
    // the charge commit together, and the request pays for one commit, not one per job plus one.
    settleJobs: ({ jobs, settle: closing }) =>
      write(async (trx) => {
        const completed: CompleteJobResult[] = [];
        for (const job of jobs) completed.push(await completeJob(trx, q, job, now()));
        const settlement = await settle(trx, q, closing, now(), clock);
        // Refreshed before it is read back: the settled row and its event carry the cost with it.
        return { jobs: completed, settlement };
      }),
    release: (input) =>
      write(async (trx) => {
        for (const job of input.jobs ?? []) await completeJob(trx, q, job, now());
        if ((input.jobs ?? []).length > 0) await q.refreshCost.run(trx, { requestId: input.requestId });
        return release(trx, input, now(), own);
      }),
    markOrphaned: (requestId) => write((trx) => markOrphaned(trx, requestId, own)),
    // The reconciling round's clock, which decided the owner's lease had expired.
    adopt: (input) => adopt(db, input, input.at === undefined ? now() : toIsoTimestamp(input.at)),

    async listOpen(opts = {}) {
      let rows = db.selectFrom('requests').selectAll().where('status', 'in', HOLDING);
      if (opts.scope) rows = rows.where((eb) => inScope(eb, opts.scope!, 'lease_id', 'created_at'));
      else if (opts.createdBefore !== undefined) rows = rows.where('created_at', '<', toIsoTimestamp(opts.createdBefore));
      return withJobs(db, await rows.orderBy('created_at').orderBy('id').execute());
    },

    async listOpenJobs(opts = {}) {
      // A job with no fal id cannot be asked about by id (the lost-submit search finds those).
      const rows = await openJobs(db, opts).where('upstream_jobs.status', 'in', OPEN_JOB).where('upstream_jobs.fal_request_id', 'is not', null).execute();
      return rows.map(toJob);
    },

    listLostSubmits: (opts = {}) => lostSubmits(db, opts),

    async knownFalIds(ids) {
      const known = new Set<string>();
      // Few ids at a time: only listing items whose input matched a lost submit are asked about.
      for (let i = 0; i < ids.length; i += 100) {
        const chunk = ids.slice(i, i + 100);
        const rows = await db
          .selectFrom('upstream_jobs')
          .select(['fal_request_id', 'fal_other_ids'])
          .where((eb) => eb.or([eb('fal_request_id', 'in', chunk), ...chunk.map((id) => eb('fal_other_ids', 'like', `%${id}%`))]))
          .execute();
        for (const r of rows) for (const id of [r.fal_request_id, ...(r.fal_other_ids?.split(' ') ?? [])]) if (id && chunk.includes(id)) known.add(id);
      }
      return known;
    },

    async listOrphaned() {
      const rows = await db.selectFrom('requests').selectAll().where('status', '=', 'orphaned').orderBy('created_at').orderBy('id').execute();
      return withJobs(db, rows);
    },

    async getRequest(requestId) {
      const row = await db.selectFrom('requests').selectAll().where('id', '=', requestId).executeTakeFirst();
      return row ? ((await withJobs(db, [row]))[0] ?? null) : null;
    },

    async getRequestByClientId(keyId, clientRequestId) {
      const row = await db.selectFrom('requests').selectAll().where('key_id', '=', keyId).where('client_request_id', '=', clientRequestId).executeTakeFirst();
      return row ? ((await withJobs(db, [row]))[0] ?? null) : null;
    },
  };
}

/** Jobs still `submitting` with no fal id, with their request's owner: its lease bounds when the submit can have left (lost-submits.ts). */
async function lostSubmits(db: Kysely<DB>, opts: ListOpenOptions): Promise<Array<JobRecord & { leaseId: string | null }>> {
  const rows = await openJobs(db, opts)
    .select('requests.lease_id as request_lease_id')
    .where('upstream_jobs.status', '=', 'submitting')
    .where('upstream_jobs.fal_request_id', 'is', null)
    .where('upstream_jobs.kind', '=', 'job')
    .execute();
  return rows.map((r) => ({ ...toJob(r), leaseId: r.request_lease_id ?? null }));
}

/** Jobs reconciliation may list, oldest first; the lease rule reads their request's owner. */
function openJobs(db: Kysely<DB>, opts: ListOpenOptions) {
  let rows = db.selectFrom('upstream_jobs').innerJoin('requests', 'requests.id', 'upstream_jobs.request_id').selectAll('upstream_jobs');
  if (opts.scope) rows = rows.where((eb) => inScope(eb, opts.scope!, 'requests.lease_id', 'upstream_jobs.created_at'));
  else if (opts.createdBefore !== undefined) rows = rows.where('upstream_jobs.created_at', '<', toIsoTimestamp(opts.createdBefore));
  return rows.orderBy('upstream_jobs.created_at').orderBy('upstream_jobs.id').limit(opts.limit ?? 1000);
}

async function reserve(db: Kysely<DB>, q: LedgerStatements, input: ReserveInput, now: () => string, leaseId: string | null): Promise<ReserveResult> {
  const amount = input.maxChargeMicros;
  if (amount < 0n) throw new RangeError('maxChargeMicros must not be negative');
  if (input.inputHashes && input.inputHashes.length !== (input.jobs ?? 0)) throw new RangeError(`inputHashes has ${input.inputHashes.length} entries for ${input.jobs ?? 0} jobs`);
  if (input.estimates && input.estimates.length !== (input.jobs ?? 0)) throw new RangeError(`estimates has ${input.estimates.length} entries for ${input.jobs ?? 0} jobs`);
  try {
    return await db.transaction().execute((trx) => reserveIn(trx, q, input, now(), leaseId));
  } catch (error) {
    // A key with no row fails the request insert on its foreign key, in
    // each dialect's own words; say what it means.
    if (!(error instanceof UnknownKeyError)) {
      const key = await db.selectFrom('api_keys').select('id').where('id', '=', input.keyId).executeTakeFirst().catch(() => null);
      if (key === undefined) throw new UnknownKeyError(input.keyId);
    }
    throw error;
  }
}

async function reserveIn(trx: Transaction<DB>, q: LedgerStatements, input: ReserveInput, at: string, leaseId: string | null): Promise<ReserveResult> {
  const amount = input.maxChargeMicros;
  // The request row first, the key row last: on PostgreSQL the key's row
  // lock is then held only from the hold to the commit, and every request of
  // one key queues on that lock, so its length bounds a key's throughput.
  const inserted = await q.insertRequest.run(trx, {
    id: input.requestId,
    client_request_id: input.clientRequestId ?? null,
    key_id: input.keyId,
    model: input.model,
    endpoint: input.endpoint,
    end_user: input.user ?? null,
    pricing_json: input.pricing ?? null,
    status: 'reserved',
    reserved_micros: amount,
    idempotency_key: input.idempotencyKey ?? null,
    created_at: at,
    lease_id: leaseId,
  });
  // Only the (key, label) index is a conflict the insert skips; our own id colliding is an error.
  if (inserted.rows.length === 0) return { ok: false, reason: 'request_id_taken' };
  const held = await q.hold.run(trx, { amount, keyId: input.keyId });
  if (held.rows.length > 0) {
    for (let i = 0; i < (input.jobs ?? 0); i++) {
      await q.insertJob.run(trx, { id: jobIdFor(input.requestId, i), requestId: input.requestId, endpoint: input.endpoint, inputHash: input.inputHashes?.[i] ?? null, estimate: input.estimates?.[i] ?? null, at });
    }
    return { ok: true };
  }
  // Refused: the request row goes again in the same transaction, so the
  // attempt commits nothing and the caller's label stays free.
  await trx.deleteFrom('requests').where('id', '=', input.requestId).execute();
  const key = await trx.selectFrom('api_keys').select(['budget_micros', 'spent_micros', 'reserved_micros']).where('id', '=', input.keyId).executeTakeFirst();
  if (!key) throw new UnknownKeyError(input.keyId);
  return {
    ok: false,
    reason: 'insufficient_quota',
    budgetMicros: toBigInt(key.budget_micros ?? 0n),
    spentMicros: toBigInt(key.spent_micros),
    reservedMicros: toBigInt(key.reserved_micros),
  };
}
