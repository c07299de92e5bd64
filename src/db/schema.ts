/**
 * Table types as Kysely sees them. Both dialects store every integer column as
 * a 64-bit integer and the driver setup in `database.ts` reads them as
 * `bigint` (better-sqlite3 `safeIntegers`, a pg int8 parser), so one query
 * codebase sees one representation. Stores still convert through
 * `values.ts` because aggregates and drivers are easy to get subtly wrong.
 *
 * Timestamps are ISO-8601 UTC strings of fixed width (`Date#toISOString`),
 * which sort and compare lexicographically in the same order as in time on
 * both dialects, and whose first 10 characters are the UTC day.
 */
import type { ColumnType, Generated } from 'kysely';

/** A 64-bit integer column: written as bigint (or a safe number), read as bigint. */
export type Int64 = ColumnType<bigint, bigint | number, bigint | number>;
/** The same, with a default in the table definition, so inserts may omit it. */
export type Int64WithDefault = ColumnType<bigint, bigint | number | undefined, bigint | number>;
type NullableInt64 = ColumnType<bigint | null, bigint | number | null, bigint | number | null>;

export type KeyRole = 'user' | 'admin';
/**
 * A request's life: `reserved` from its reservation until it closes
 * (`settled`, `released`, `failed`, `orphaned`); what reached fal is its
 * jobs' state. `submitted` is never written: a row that has it holds its
 * reservation exactly as `reserved` does (HOLDING).
 */
export type RequestStatus = 'reserved' | 'submitted' | 'settled' | 'released' | 'failed' | 'orphaned';
/**
 * A fal job's life (src/metering/job-state.ts): `submitting` (the row is
 * written before the submit leaves), `submitted` (fal answered with its id),
 * then one final state. `refused`: no job exists at fal; `lost`: we gave up
 * learning what became of it.
 */
export type JobStatus = 'submitting' | 'submitted' | 'completed' | 'failed' | 'cancelled' | 'refused' | 'lost';
/** `stray`: a job fal made on a submit attempt it refused; its cost is upstream cost, never charged. */
export type JobKind = 'job' | 'stray';
export const OPEN_JOB: readonly JobStatus[] = ['submitting', 'submitted'];
export type IdempotencyState = 'running' | 'done';

export type KeyKind = 'issued' | 'static';

export interface ApiKeysTable {
  id: string;
  /**
   * `issued` keys authenticate through this table; `static` rows only anchor
   * the metering of keys configured in the environment, which authenticate
   * from the environment alone, so removing one there revokes it.
   */
  kind: ColumnType<KeyKind, KeyKind | undefined, KeyKind>;
  name: string;
  key_hash: string;
  role: KeyRole;
  /** 0 or 1: SQLite has no boolean and better-sqlite3 cannot bind one. */
  enabled: Int64WithDefault;
  budget_micros: NullableInt64;
  spent_micros: Int64WithDefault;
  reserved_micros: Int64WithDefault;
  rpm_limit: NullableInt64;
  created_at: string;
  updated_at: string;
}

export interface RequestsTable {
  /** Ours, always (newRequestId); what jobs, idempotency records and billing events name. */
  id: string;
  /** The caller's `x-request-id`: a label unique per key (key_id, client_request_id); null when none was sent. */
  client_request_id: ColumnType<string | null, string | null | undefined, string | null>;
  key_id: string;
  model: string;
  endpoint: string;
  /** The caller's OpenAI `user` field; not `user`, which PostgreSQL reads as CURRENT_USER unquoted. */
  end_user: string | null;
  pricing_json: ColumnType<string | null, string | null | undefined, string | null>;
  status: RequestStatus;
  reserved_micros: Int64;
  charge_micros: Int64WithDefault;
  credits: Int64WithDefault;
  upstream_cost_micros: Int64WithDefault;
  images: Int64WithDefault;
  error_code: string | null;
  idempotency_key: string | null;
  created_at: string;
  settled_at: string | null;
  /** The lease of the process that took the request (leases.id); null on rows written without one. */
  lease_id: ColumnType<string | null, string | null | undefined, string | null>;
  /** What holds the reservation (migration 0006): the key row, nothing (no budget), or a budget slice. */
  funded_by: ColumnType<FundedBy, FundedBy | undefined, FundedBy>;
  /** The budget slice (budget_slices.id) a `slice` request's hold came from. */
  slice_id: ColumnType<string | null, string | null | undefined, string | null>;
}

export type FundedBy = 'key' | 'none' | 'slice';

/** A share of a key's budget taken by one process lease (src/metering/budget-slices.ts). */
export interface BudgetSlicesTable {
  id: string;
  key_id: string;
  lease_id: string;
  granted_micros: Int64;
  created_at: string;
}

export interface UpstreamJobsTable {
  /** Ours: `<request id>/<index>`, or `<request id>/stray/<fal id>`. */
  id: string;
  request_id: string;
  kind: ColumnType<JobKind, JobKind | undefined, JobKind>;
  /** The id fal's submit answered; null until it did. */
  fal_request_id: string | null;
  /** Other ids fal reported for this job (a runner retry), space-separated. */
  fal_other_ids: string | null;
  /**
   * What identifies the job's input at fal: the hex SHA-256 of the canonical
   * JSON of the exact input submitted (src/metering/lost-submits.ts). How a
   * submit whose answer was lost is found in fal's request listing; null
   * for strays.
   */
  input_hash: string | null;
  endpoint: string;
  status: JobStatus;
  images: Int64WithDefault;
  pixels: Int64WithDefault;
  /** Canonical decimal strings (see `canonicalDecimal`), so SQL equality is numeric equality. */
  units_estimate: string | null;
  units_fal: string | null;
  upstream_cost_micros: Int64WithDefault;
  /** Why a job ended without images (fal's status or our reason). */
  error_code: string | null;
  created_at: string;
  completed_at: string | null;
  /** The upstream cost the job would have if it completed as asked, priced at reservation; null for strays. */
  estimate_micros: ColumnType<bigint | null, bigint | number | null | undefined, bigint | number | null>;
  /** 1 when `upstream_cost_micros` is our estimate, not a cost fal reported (a completed job without billed units, a job given up). */
  cost_estimated: Int64WithDefault;
  /** fal's last answer about a job given up as `lost` (its status, or the error it answered). */
  fal_last_word: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface IdempotencyTable {
  key_id: string;
  idem_key: string;
  body_hash: string;
  state: IdempotencyState;
  status_code: NullableInt64;
  response_json: string | null;
  request_id: string;
  created_at: string;
  expires_at: string;
  /**
   * The lease of the process that will write the answer of a running claim
   * (leases.id); null when none will (its caller left before an answer, or
   * the claim was made without a lease): its request's ledger row decides.
   */
  lease_id: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface OutboxTable {
  seq: Generated<bigint>;
  event_id: string;
  key_id: string;
  type: string;
  payload_json: string;
  created_at: string;
  attempts: Int64WithDefault;
  next_attempt_at: string;
  delivered_at: string | null;
  last_error: string | null;
}

/** A service process's claim to be alive (src/metering/leases.ts); host and pid are for operators. */
export interface LeasesTable {
  id: string;
  host: string;
  pid: Int64;
  started_at: string;
  heartbeat_at: string;
  expires_at: string;
}

export interface DB {
  leases: LeasesTable;
  api_keys: ApiKeysTable;
  requests: RequestsTable;
  upstream_jobs: UpstreamJobsTable;
  idempotency: IdempotencyTable;
  outbox: OutboxTable;
  budget_slices: BudgetSlicesTable;
}
