/**
 * The ledger's rows as the rest of the service sees them (what the ledger
 * answers and the reports read), and the reads of one row by id. Conversions
 * from driver values go through src/db/values.ts, so an amount is always an
 * exact bigint.
 */
import type { Kysely, Selectable } from 'kysely';
import type { DB, JobKind, JobStatus, RequestStatus, RequestsTable, UpstreamJobsTable } from '../db/schema.js';
import { toBigInt, toNumber } from '../db/values.js';

export interface RequestRecord {
  /** Ours (newRequestId): unique across every key. */
  id: string;
  /** The caller's `x-request-id`, unique only within its key; null when none was sent. */
  clientRequestId: string | null;
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
  /** The lease of the process that took it (see leases.ts); null when it was taken without one. */
  leaseId: string | null;
}

export interface JobRecord {
  /** Ours (see jobIdFor in ledger.ts). */
  id: string;
  requestId: string;
  kind: JobKind;
  /** The id fal's submit answered; null while the submit has not answered. */
  falRequestId: string | null;
  /** Other ids fal reported for the job (its runner retry). */
  otherFalIds: string[];
  /** The hash of the input submitted (see lost-submits.ts); null for strays and rows written before it was kept. */
  inputHash: string | null;
  endpoint: string;
  status: JobStatus;
  images: number;
  pixels: number;
  unitsEstimate: string | null;
  unitsFal: string | null;
  upstreamCostMicros: bigint;
  errorCode: string | null;
  createdAt: string;
  completedAt: string | null;
  /** What the job would cost fal's way if it completed as asked (priced at reservation); null for strays. */
  estimateMicros: bigint | null;
  /** `upstreamCostMicros` is our estimate, not a cost fal reported. */
  costEstimated: boolean;
  /** fal's last answer about a job given up as `lost`. */
  falLastWord: string | null;
}

export interface RequestWithJobs extends RequestRecord {
  jobs: JobRecord[];
}

/**
 * Every column of each table, named: what the ledger's prepared statements
 * return instead of `*` (src/db/prepared.ts says why). The records are typed
 * so a column added to the schema must be added here too.
 */
const REQUEST_COLUMN_SET: Record<keyof RequestsTable, true> = {
  id: true, client_request_id: true, key_id: true, model: true, endpoint: true, end_user: true, pricing_json: true, status: true,
  reserved_micros: true, charge_micros: true, credits: true, upstream_cost_micros: true, images: true, error_code: true,
  idempotency_key: true, created_at: true, settled_at: true, lease_id: true, funded_by: true, slice_id: true,
};
const JOB_COLUMN_SET: Record<keyof UpstreamJobsTable, true> = {
  id: true, request_id: true, kind: true, fal_request_id: true, fal_other_ids: true, input_hash: true, endpoint: true, status: true,
  images: true, pixels: true, units_estimate: true, units_fal: true, upstream_cost_micros: true, error_code: true, created_at: true,
  completed_at: true, estimate_micros: true, cost_estimated: true, fal_last_word: true,
};
export const REQUEST_COLUMNS = Object.keys(REQUEST_COLUMN_SET) as Array<keyof RequestsTable>;
export const JOB_COLUMNS = Object.keys(JOB_COLUMN_SET) as Array<keyof UpstreamJobsTable>;

export function toRequest(row: Selectable<RequestsTable>): RequestRecord {
  return {
    id: row.id,
    clientRequestId: row.client_request_id ?? null,
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
    leaseId: row.lease_id ?? null,
  };
}

export function toJob(row: Selectable<UpstreamJobsTable>): JobRecord {
  return {
    id: row.id,
    requestId: row.request_id,
    kind: row.kind,
    falRequestId: row.fal_request_id,
    otherFalIds: row.fal_other_ids ? row.fal_other_ids.split(' ') : [],
    inputHash: row.input_hash,
    endpoint: row.endpoint,
    status: row.status,
    images: toNumber(row.images),
    pixels: toNumber(row.pixels),
    unitsEstimate: row.units_estimate,
    unitsFal: row.units_fal,
    upstreamCostMicros: toBigInt(row.upstream_cost_micros),
    errorCode: row.error_code,
    createdAt: row.created_at,
    completedAt: row.completed_at,
    estimateMicros: row.estimate_micros === null || row.estimate_micros === undefined ? null : toBigInt(row.estimate_micros),
    costEstimated: toBigInt(row.cost_estimated ?? 0n) === 1n,
    falLastWord: row.fal_last_word ?? null,
  };
}

export class UnknownRequestError extends Error {
  constructor(readonly requestId: string) {
    super(`no request ${JSON.stringify(requestId)} in the ledger`);
    this.name = 'UnknownRequestError';
  }
}

export class UnknownJobError extends Error {
  constructor(readonly jobId: string) {
    super(`no upstream job ${JSON.stringify(jobId)} in the ledger`);
    this.name = 'UnknownJobError';
  }
}

const ID_CHUNK = 500;

export async function requestOrThrow(q: Kysely<DB>, requestId: string): Promise<RequestRecord> {
  const row = await q.selectFrom('requests').selectAll().where('id', '=', requestId).executeTakeFirst();
  if (!row) throw new UnknownRequestError(requestId);
  return toRequest(row);
}

export async function jobOrThrow(q: Kysely<DB>, jobId: string): Promise<JobRecord> {
  const row = await q.selectFrom('upstream_jobs').selectAll().where('id', '=', jobId).executeTakeFirst();
  if (!row) throw new UnknownJobError(jobId);
  return toJob(row);
}

/** The requests with their jobs, oldest job first, fetched in chunks of ids. */
export async function withJobs(db: Kysely<DB>, rows: Selectable<RequestsTable>[]): Promise<RequestWithJobs[]> {
  const byRequest = new Map<string, JobRecord[]>();
  for (let i = 0; i < rows.length; i += ID_CHUNK) {
    const ids = rows.slice(i, i + ID_CHUNK).map((r) => r.id);
    const jobs = await db.selectFrom('upstream_jobs').selectAll().where('request_id', 'in', ids).orderBy('created_at').orderBy('id').execute();
    for (const job of jobs) {
      const list = byRequest.get(job.request_id) ?? [];
      list.push(toJob(job));
      byRequest.set(job.request_id, list);
    }
  }
  return rows.map((r) => ({ ...toRequest(r), jobs: byRequest.get(r.id) ?? [] }));
}
