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
import { sql, type Kysely, type Transaction } from 'kysely';
import { ledgerStatements, HOLDING } from './ledger-statements.js';
import type { Database } from '../db/database.js';
import { OPEN_JOB, type DB } from '../db/schema.js';
import { systemClock, toIsoTimestamp, type Clock, type TimeInput } from '../db/values.js';
import { inScope } from './lease-store.js';
import type { ReconcileScope } from './leases.js';
import { toJob, withJobs, type JobRecord, type RequestWithJobs } from './records.js';

import { createSliceBook, foldOrphanSlices, type SliceBook } from './budget-slices.js';
import { reserve, type ReserveContext } from './ledger-reserve.js';
import { adopt, markOrphaned, release, settle, type SliceEnd, type ReleaseInput, type ReleaseResult, type SettleInput, type SettleResult } from './ledger-requests.js';
import { pgWrites, settlesAlone, type GroupCommit } from './ledger-pg.js';
import { closeJob, completeJob, completeLostJob, recordStrays, recordSubmit, type CloseJobInput, type CompleteJobInput, type CompleteJobResult } from './ledger-jobs.js';

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
  /** fal's late result for a job given up as `lost`, its request closed: completed, still marked given up, never charged (completeLostJob). */
  completeLostJob(input: CompleteJobInput): Promise<CompleteJobResult>;
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
  /**
   * Jobs given up as `lost` that fal named, given up at or after `since`,
   * in the order they were given up, after `after` (a page's last job):
   * whom fal's late word may still concern (late-word.ts).
   */
  listLostJobs(options: { since: string; after?: { at: string; id: string } | undefined; limit: number }): Promise<JobRecord[]>;
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
  /**
   * Returns the budget slices of leases the scope does not count live, and
   * this process's own that it no longer reserves from, each once none of
   * its requests holds (budget-slices.ts). Answers how many.
   */
  returnSlices(scope: ReconcileScope): Promise<number>;
  /** This process's budget slices (PostgreSQL under a lease; budget-slices.ts); undefined where budgets are held on the key row. */
  readonly slices: SliceBook | undefined;
}

export { UnknownKeyError } from './ledger-reserve.js';

export interface LedgerOptions {
  clock?: Clock | undefined;
  /** The lease of the process writing (leases.ts): every request it reserves names it. */
  leaseId?: string | undefined;
  /**
   * Budgets held through slices (budget-slices.ts) rather than on the key
   * row. Default: on PostgreSQL when there is a lease. SQLite has one writer
   * at a time, so the key row costs it no queue.
   */
  budgetSlices?: boolean | undefined;
  /** How long a budget slice nobody reserves from is kept (budget-slices.ts). */
  sliceIdleReturnMs?: number | undefined;
  /**
   * PostgreSQL: how the request path's writes of concurrent requests are
   * grouped into one statement each (group-commit.ts). Default
   * DEFAULT_GROUP_COMMIT; `false` sends each alone.
   */
  groupCommit?: GroupCommit | undefined;
  /** Where a slice that could not be returned is reported. */
  onSliceError?: ((err: unknown, what: string) => void) | undefined;
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
  const useSlices = options.leaseId !== undefined && (options.budgetSlices ?? database.dialect === 'postgres');
  const slices = useSlices ? createSliceBook(db, { leaseId: options.leaseId!, clock, idleReturnMs: options.sliceIdleReturnMs, onError: options.onSliceError }) : undefined;
  const write = <T>(work: (trx: Transaction<DB>) => Promise<T>): Promise<T> => db.transaction().execute(work);
  /** A write whose slice-funded holds end: the slice book learns of them once the transaction has committed. */
  const writeEnding = async <T>(work: (trx: Transaction<DB>, ended: SliceEnd[]) => Promise<T>): Promise<T> => {
    const ended: SliceEnd[] = [];
    const out = await db.transaction().execute((trx) => work(trx, ended));
    for (const e of ended) slices?.ended(e.sliceId, e.hold, e.charge);
    return out;
  };
  // A job write that changed its row refreshes its request's upstream cost in the same transaction.
  const costRefreshed = <T extends { changed: boolean; job: JobRecord }>(work: (trx: Transaction<DB>) => Promise<T>): Promise<T> =>
    write(async (trx) => {
      const out = await work(trx);
      if (out.changed) await q.refreshCost.run(trx, { requestId: out.job.requestId });
      return out;
    });
  const pg = database.dialect === 'postgres' ? pgWrites(database.writes ?? db, own, options.groupCommit) : undefined;
  const reserving: ReserveContext = { db, q, pg, now, leaseId: options.leaseId ?? null, slices, budgeted: new Set() };

  return {
    slices,
    returnSlices: (scope) => foldOrphanSlices(db, { live: scope.live, ownLeaseId: scope.ownLeaseId, book: slices }),
    reserve: (input) => reserve(reserving, input),
    recordSubmit: (input) => recordSubmit(db, q, input, pg),
    completeJob: (input) => costRefreshed((trx) => completeJob(trx, q, input, now())),
    completeLostJob: (input) => costRefreshed((trx) => completeLostJob(trx, input, now())),
    closeJob: (input) => costRefreshed((trx) => closeJob(trx, input, now())),
    recordStrays: (input) => write((trx) => recordStrays(trx, input, now())),
    settle: (input) => writeEnding((trx, ended) => settle(trx, q, input, now(), clock, ended)),
    // One transaction for the whole close of a request: the jobs' rows and
    // the charge commit together, and the request pays for one commit, not
    // one per job plus one. On PostgreSQL the common case is one statement
    // (ledger-pg.ts); whatever it leaves unchanged takes the transaction.
    settleJobs: async ({ jobs, settle: closing }) => {
      if (pg && settlesAlone({ jobs, settle: closing })) {
        const alone = await pg.settle({ jobs, settle: closing, at: now() });
        if (alone?.ended) slices?.ended(alone.ended.sliceId, alone.ended.hold, alone.ended.charge);
        if (alone) return { jobs: alone.jobs, settlement: alone.settlement };
      }
      return writeEnding(async (trx, ended) => {
        const completed: CompleteJobResult[] = [];
        for (const job of jobs) completed.push(await completeJob(trx, q, job, now()));
        const settlement = await settle(trx, q, closing, now(), clock, ended);
        return { jobs: completed, settlement };
      });
    },
    release: (input) =>
      writeEnding(async (trx, ended) => {
        for (const job of input.jobs ?? []) await completeJob(trx, q, job, now());
        if ((input.jobs ?? []).length > 0) await q.refreshCost.run(trx, { requestId: input.requestId });
        return release(trx, input, now(), own, ended);
      }),
    markOrphaned: (requestId) => writeEnding((trx, ended) => markOrphaned(trx, requestId, own, ended)),
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

    async listLostJobs({ since, after, limit }) {
      // `status = 'lost'` as a literal: SQLite uses the partial index upstream_jobs_lost only for a literal term.
      let rows = db.selectFrom('upstream_jobs').selectAll().where(sql<boolean>`status = 'lost'`).where('completed_at', '>=', since).where('fal_request_id', 'is not', null);
      if (after) rows = rows.where((eb) => eb.or([eb('completed_at', '>', after.at), eb.and([eb('completed_at', '=', after.at), eb('id', '>', after.id)])]));
      return (await rows.orderBy('completed_at').orderBy('id').limit(limit).execute()).map(toJob);
    },

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
