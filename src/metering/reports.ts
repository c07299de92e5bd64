/**
 * Reporting over the ledger's tables: usage totals, billing exports and the
 * jobs whose billed units fal and we disagree on. Read-only, and off the
 * request path: the ledger (src/metering/ledger.ts) writes the rows these read.
 *
 * Time ranges apply to settlement time, not request time: a charge is
 * committed at settlement, so a period that has been exported can never gain
 * a row later (a request started before midnight and settled after it counts
 * in the new day, instead of in a day already invoiced).
 */
import { sql, type Expression, type ExpressionBuilder, type Selectable, type SqlBool } from 'kysely';
import type { Database } from '../db/database.js';
import type { DB, RequestsTable } from '../db/schema.js';
import { toBigInt, toIsoTimestamp, toNumber, type TimeInput } from '../db/values.js';
import { toJob, type JobRecord } from './records.js';

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
  /** Our request id, unique across keys. */
  request_id: string;
  /** The `x-request-id` the caller sent, unique only within its key; null when none. */
  client_request_id: string | null;
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
  'client_request_id',
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

/**
 * Upstream cost no caller pays: what fal billed for failed jobs, for jobs of
 * requests answered with an error, and for strays. A job's cost is recovered
 * only when it completed and its request was settled (charged).
 */
export interface UnrecoveredReport {
  totalMicros: bigint;
  /** Of `totalMicros`, our estimate for jobs fal reported no cost for (given up as `lost`, or completed without billed units). */
  estimatedMicros: bigint;
  jobs: number;
  byModel: Array<{ model: string; micros: bigint; estimatedMicros: bigint; jobs: number }>;
}

export interface Reports {
  /** Upstream cost not charged to anyone; time range on the job's end. */
  unrecovered(filter?: UsageFilter): Promise<UnrecoveredReport>;
  /** Settled requests only, by settlement time. */
  usage(filter?: UsageFilter & { groupBy?: UsageGroupBy | undefined }): Promise<UsageReport>;
  /** Settled requests ordered by (settled_at, request_id), fetched in keyset-paginated batches. */
  exportRows(filter?: ExportFilter): AsyncIterable<ExportRow>;
  unitsDisagreements(options?: { limit?: number | undefined }): Promise<UnitsDisagreements>;
}

export interface ReportsOptions {
  /** Default export batch size. */
  exportBatchSize?: number | undefined;
}

const ZERO: UsageTotals = { requests: 0, images: 0, chargeMicros: 0n, credits: 0n, upstreamCostMicros: 0n };

export function createReports(database: Database, options: ReportsOptions = {}): Reports {
  const db = database.db;
  const defaultBatch = options.exportBatchSize ?? 1000;

  return {
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
      return { rows, totals: rows.reduce(addTotals, ZERO) };
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

    async unrecovered(filter = {}) {
      let q = db
        .selectFrom('upstream_jobs as j')
        .innerJoin('requests as r', 'r.id', 'j.request_id')
        .where('j.upstream_cost_micros', '>', 0n)
        // Charged: a job its settled request completed. One completed after it was given up (error code kept, late-word.ts) was not.
        .where((eb) => eb.not(eb.and([eb('r.status', '=', 'settled'), eb('j.kind', '=', 'job'), eb('j.status', '=', 'completed'), eb('j.error_code', 'is', null)])));
      if (filter.from !== undefined) q = q.where('j.completed_at', '>=', toIsoTimestamp(filter.from));
      if (filter.to !== undefined) q = q.where('j.completed_at', '<', toIsoTimestamp(filter.to));
      if (filter.model !== undefined) q = q.where('r.model', '=', filter.model);
      if (filter.keyId !== undefined) q = q.where('r.key_id', '=', filter.keyId);
      const rows = await q
        .select(['r.model as model', sql<bigint>`sum(j.upstream_cost_micros)`.as('micros'), sql<bigint>`sum(case when j.cost_estimated = 1 then j.upstream_cost_micros else 0 end)`.as('estimated'), sql<bigint>`count(*)`.as('jobs')])
        .groupBy('r.model')
        .orderBy('r.model')
        .execute();
      const byModel = rows.map((r) => ({ model: r.model, micros: toBigInt(r.micros), estimatedMicros: toBigInt(r.estimated), jobs: toNumber(r.jobs) }));
      return { totalMicros: byModel.reduce((s, r) => s + r.micros, 0n), estimatedMicros: byModel.reduce((s, r) => s + r.estimatedMicros, 0n), jobs: byModel.reduce((s, r) => s + r.jobs, 0), byModel };
    },

    async unitsDisagreements(opts = {}) {
      // Canonical decimals (see canonicalDecimal in money.ts) make string inequality numeric inequality.
      const differs = db
        .selectFrom('upstream_jobs')
        .where('units_fal', 'is not', null)
        .where('units_estimate', 'is not', null)
        .whereRef('units_fal', '<>', 'units_estimate');
      const count = await differs.select(sql<bigint>`count(*)`.as('n')).executeTakeFirstOrThrow();
      const jobs = await differs
        .selectAll()
        .orderBy('completed_at', 'desc')
        .orderBy('id', 'desc')
        .limit(Math.max(0, Math.trunc(opts.limit ?? 100)))
        .execute();
      return { count: toNumber(count.n), jobs: jobs.map(toJob) };
    },
  };
}

function settledIn(eb: ExpressionBuilder<DB, 'requests'>, filter: UsageFilter): Expression<SqlBool> {
  const conditions: Expression<SqlBool>[] = [eb('status', '=', 'settled')];
  if (filter.from !== undefined) conditions.push(eb('settled_at', '>=', toIsoTimestamp(filter.from)));
  if (filter.to !== undefined) conditions.push(eb('settled_at', '<', toIsoTimestamp(filter.to)));
  if (filter.model !== undefined) conditions.push(eb('model', '=', filter.model));
  if (filter.keyId !== undefined) conditions.push(eb('key_id', '=', filter.keyId));
  return eb.and(conditions);
}

function addTotals(t: UsageTotals, r: UsageTotals): UsageTotals {
  return {
    requests: t.requests + r.requests,
    images: t.images + r.images,
    chargeMicros: t.chargeMicros + r.chargeMicros,
    credits: t.credits + r.credits,
    upstreamCostMicros: t.upstreamCostMicros + r.upstreamCostMicros,
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
    client_request_id: row.client_request_id ?? null,
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
