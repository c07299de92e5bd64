/**
 * How keys and usage look outside the process: the JSON the HTTP routes
 * answer and the CSV/JSONL rows of exports. Shared by the routes and the CLI
 * so `keys list` and `GET /v1/admin/keys`, or `usage export` and
 * `format=csv`, print the same thing.
 *
 * Money leaves as exact decimal USD strings with six places (and integer
 * micro-dollars in exports), never as floats.
 */
import type { ApiKeyView, AdminUsageReportView, UsageReportView } from '../schemas/index.js';
import type { ExportRow, UnrecoveredReport, UsageGroupBy, UsageReport, UsageTotals } from './reports.js';
import type { KeyRecord } from './keys-store.js';
import { formatUsd } from './money.js';

export function keyView(k: KeyRecord): ApiKeyView {
  return {
    id: k.id,
    kind: k.kind,
    name: k.name,
    role: k.role,
    enabled: k.enabled,
    budget_usd: k.budgetMicros === null ? null : formatUsd(k.budgetMicros),
    spent_usd: formatUsd(k.spentMicros),
    reserved_usd: formatUsd(k.reservedMicros),
    rpm_limit: k.rpmLimit,
    created_at: k.createdAt,
    updated_at: k.updatedAt,
  };
}

/** Credits are integers in JSON (as in `meta.usage`); refuse rather than round one a number cannot hold. */
function exactNumber(n: bigint): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`credit total ${n} is beyond what JSON clients read exactly`);
  return Number(n);
}

function callerAmounts(t: UsageTotals) {
  return { requests: t.requests, images: t.images, cost_usd: formatUsd(t.chargeMicros), credits: exactNumber(t.credits) };
}

function adminAmounts(t: UsageTotals) {
  return {
    ...callerAmounts(t),
    upstream_cost_usd: formatUsd(t.upstreamCostMicros),
    margin_usd: formatUsd(t.chargeMicros - t.upstreamCostMicros),
  };
}

export interface ReportEcho {
  from: string | null;
  to: string | null;
  model: string | null;
  keyId: string | null;
  groupBy: UsageGroupBy | null;
}

function echo(e: ReportEcho) {
  return { object: 'usage' as const, from: e.from, to: e.to, model: e.model, key_id: e.keyId, group_by: e.groupBy };
}

export function usageReportView(report: UsageReport, e: ReportEcho): UsageReportView {
  return {
    ...echo(e),
    totals: callerAmounts(report.totals),
    data: report.rows.map((r) => ({ group: r.group, ...callerAmounts(r) })),
  };
}

export function adminUsageReportView(report: UsageReport, unrecovered: UnrecoveredReport, e: ReportEcho): AdminUsageReportView {
  return {
    ...echo(e),
    totals: adminAmounts(report.totals),
    data: report.rows.map((r) => ({ group: r.group, ...adminAmounts(r) })),
    unrecovered: {
      upstream_cost_usd: formatUsd(unrecovered.totalMicros),
      estimated_usd: formatUsd(unrecovered.estimatedMicros),
      jobs: unrecovered.jobs,
      by_model: unrecovered.byModel.map((m) => ({ model: m.model, upstream_cost_usd: formatUsd(m.micros), estimated_usd: formatUsd(m.estimatedMicros), jobs: m.jobs })),
    },
  };
}

/**
 * Export columns, in order. Callers see what they were charged; the
 * operator's view adds what fal billed us and the margin. Each amount is
 * given both as exact integer micro-dollars (for sums) and as a USD string
 * (for people).
 */
export const CALLER_EXPORT_COLUMNS = [
  'request_id',
  'client_request_id',
  'key_id',
  'model',
  'endpoint',
  'user',
  'images',
  'cost_usd',
  'charge_micros',
  'credits',
  'created_at',
  'settled_at',
] as const;

export const ADMIN_EXPORT_COLUMNS = [
  ...CALLER_EXPORT_COLUMNS,
  'upstream_cost_usd',
  'upstream_cost_micros',
  'margin_usd',
] as const;

export type ExportView = 'caller' | 'admin';
export type ExportFormat = 'csv' | 'jsonl';
type Cell = string | number | bigint | null;

export function exportColumns(view: ExportView): readonly string[] {
  return view === 'admin' ? ADMIN_EXPORT_COLUMNS : CALLER_EXPORT_COLUMNS;
}

function cells(row: ExportRow, view: ExportView): Cell[] {
  const caller: Cell[] = [
    row.request_id,
    row.client_request_id,
    row.key_id,
    row.model,
    row.endpoint,
    row.user,
    row.images,
    formatUsd(row.charge_micros),
    row.charge_micros,
    row.credits,
    row.created_at,
    row.settled_at,
  ];
  if (view === 'caller') return caller;
  return [...caller, formatUsd(row.upstream_cost_micros), row.upstream_cost_micros, formatUsd(row.charge_micros - row.upstream_cost_micros)];
}

/** RFC 4180: quote a field only when it holds a comma, quote or line break. */
function csvField(v: Cell): string {
  if (v === null) return '';
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csvLine(values: readonly Cell[]): string {
  return `${values.map(csvField).join(',')}\r\n`;
}

/** Built by hand so a bigint is written as a JSON integer, exactly, whatever its size. */
function jsonlLine(columns: readonly string[], values: readonly Cell[]): string {
  const parts = columns.map((c, i) => {
    const v = values[i] ?? null;
    return `${JSON.stringify(c)}:${typeof v === 'bigint' ? v.toString() : JSON.stringify(v)}`;
  });
  return `{${parts.join(',')}}\n`;
}

/** The export as text lines: CSV starts with its header row; JSONL has one object per row. */
export async function* exportLines(rows: AsyncIterable<ExportRow>, view: ExportView, format: ExportFormat): AsyncGenerator<string> {
  const columns = exportColumns(view);
  if (format === 'csv') yield csvLine(columns);
  for await (const row of rows) {
    const values = cells(row, view);
    yield format === 'csv' ? csvLine(values) : jsonlLine(columns, values);
  }
}

/**
 * Joins lines into chunks of about `chunkBytes`: one write per chunk instead
 * of per row, and nothing is sent before the first rows have been read, so
 * a database failure at the start still gets a proper error response.
 */
export async function* chunked(lines: AsyncIterable<string>, chunkBytes = 64 * 1024): AsyncGenerator<string> {
  let buf = '';
  for await (const line of lines) {
    buf += line;
    if (buf.length >= chunkBytes) {
      yield buf;
      buf = '';
    }
  }
  if (buf !== '') yield buf;
}
