/**
 * The ledger's rows as the rest of the service sees them: what the ledger
 * answers and what the reports read. Conversions from driver values go
 * through src/db/values.ts, so an amount is always an exact bigint.
 */
import type { Selectable } from 'kysely';
import type { JobStatus, RequestStatus, RequestsTable, UpstreamJobsTable } from '../db/schema.js';
import { toBigInt, toNumber } from '../db/values.js';

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

export function toRequest(row: Selectable<RequestsTable>): RequestRecord {
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

export function toJob(row: Selectable<UpstreamJobsTable>): JobRecord {
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
