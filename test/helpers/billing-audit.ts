/**
 * What a billing team does with fal's invoice: lay it beside our ledger and
 * check it job for job, then check what callers were told against what they
 * were charged. Used by the fault soak (test/soak/) once every fal job is
 * final; its unit test (billing-audit.test.ts) pins each rule.
 *
 * The rules:
 * - every entry of fal's billing log (keyed by the `request_id` submit
 *   answered) has exactly one ledger job, whose upstream cost equals the
 *   entry's usd to the micro-dollar; no ledger job carries upstream cost fal
 *   did not bill; the totals are equal; no ledger job is left unresolved,
 *   and none carries a fal id fal never gave out (when fal's job list is given);
 * - every request answered 200 is charged once, at its `x-usage-cost-usd`;
 *   no request answered with an error is charged;
 * - no key has spent more than its budget, or other than its requests'
 *   charges; no reservation is left held.
 *
 * Everything this file knows about the ledger's tables is in `readLedger`:
 * when the schema changes, that function is the one edit. Jobs are keyed by
 * our own id (`<request>/<index>`), fal's id added when submit answered.
 */
import type { Kysely } from 'kysely';
import type { DB } from '../../src/db/schema.js';
import { formatUsd, parseUsd } from '../../src/metering/money.js';

/** A fal job as the ledger holds it. */
export interface LedgerJob {
  /** The row's own key (our job id). */
  id: string;
  /** Every fal id the row carries (submit's id first; a runner retry's beside it). */
  falIds: string[];
  /** Our request the job belongs to. */
  requestId: string;
  upstreamCostMicros: bigint;
  state: string;
  /** The ledger knows how the job ended (billed, failed, cancelled, lost, ...). */
  final: boolean;
}

export interface LedgerRequest {
  id: string;
  /** The caller's `x-request-id` (unique only within its key); null when none was sent. */
  clientRequestId?: string | null;
  keyId: string;
  state: string;
  chargeMicros: bigint;
  /** Still holding its reservation on the key. */
  holding: boolean;
}

export interface LedgerKey {
  id: string;
  budgetMicros: bigint | null;
  spentMicros: bigint;
  reservedMicros: bigint;
}

export interface LedgerSnapshot {
  jobs: LedgerJob[];
  requests: LedgerRequest[];
  keys: LedgerKey[];
}

// ---- The ledger's tables: the one place that knows them. -------------------

const FINAL_JOB_STATES = new Set(['completed', 'failed', 'cancelled', 'refused', 'lost']);
const HOLDING_REQUEST_STATES = new Set(['reserved', 'submitted']);

/** Reads the whole ledger (a soak's worth of rows) into plain records. */
export async function readLedger(db: Kysely<DB>): Promise<LedgerSnapshot> {
  const [jobs, requests, keys] = await Promise.all([
    db.selectFrom('upstream_jobs').select(['id', 'fal_request_id', 'fal_other_ids', 'request_id', 'status', 'upstream_cost_micros']).execute(),
    db.selectFrom('requests').select(['id', 'client_request_id', 'key_id', 'status', 'charge_micros']).execute(),
    db.selectFrom('api_keys').select(['id', 'budget_micros', 'spent_micros', 'reserved_micros']).execute(),
  ]);
  return {
    jobs: jobs.map((j) => ({
      id: j.id,
      falIds: [...(j.fal_request_id ? [j.fal_request_id] : []), ...(j.fal_other_ids ? j.fal_other_ids.split(' ') : [])],
      requestId: j.request_id,
      upstreamCostMicros: BigInt(j.upstream_cost_micros),
      state: j.status,
      final: FINAL_JOB_STATES.has(j.status),
    })),
    requests: requests.map((r) => ({
      id: r.id,
      clientRequestId: r.client_request_id,
      keyId: r.key_id,
      state: r.status,
      chargeMicros: BigInt(r.charge_micros),
      holding: HOLDING_REQUEST_STATES.has(r.status),
    })),
    keys: keys.map((k) => ({
      id: k.id,
      budgetMicros: k.budget_micros === null ? null : BigInt(k.budget_micros),
      spentMicros: BigInt(k.spent_micros),
      reservedMicros: BigInt(k.reserved_micros),
    })),
  };
}

// ---- The comparison: pure, over plain records. ----------------------------

/** One entry of the emulator's `GET /_emulator/billing` (the fields the audit reads). */
export interface BilledJob {
  request_id: string;
  gateway_request_id?: string;
  usd: string;
}

/** What one caller request got back. */
export interface CallerAnswer {
  /** The answer's `x-request-id`: the label the caller sent, or our request id when it sent none. */
  requestId: string;
  /** The HTTP status answered; null when no answer was written (the caller left, the connection died). */
  status: number | null;
  /** `x-usage-cost-usd` of a 200. */
  costUsd?: string | null | undefined;
}

export type JobDrift =
  | { kind: 'billed_job_missing'; falId: string; billedMicros: bigint }
  | { kind: 'billed_job_twice'; falId: string; jobIds: string[]; billedMicros: bigint }
  | { kind: 'cost_differs'; falId: string; jobId: string; requestId: string; billedMicros: bigint; ledgerMicros: bigint }
  | { kind: 'cost_not_billed'; jobId: string; requestId: string; ledgerMicros: bigint }
  | { kind: 'job_not_final'; jobId: string; requestId: string; state: string }
  | { kind: 'job_unknown_to_fal'; jobId: string; requestId: string; falId: string; state: string };

export type RequestDrift =
  | { kind: 'ok_not_in_ledger'; requestId: string; headerMicros: bigint | null }
  | { kind: 'ok_without_cost_header'; requestId: string; chargeMicros: bigint }
  | { kind: 'ok_charge_differs'; requestId: string; state: string; headerMicros: bigint; chargeMicros: bigint }
  | { kind: 'error_charged'; requestId: string; status: number; state: string; chargeMicros: bigint }
  | { kind: 'hold_open'; requestId: string; keyId: string; state: string };

export type KeyDrift =
  | { kind: 'over_budget'; keyId: string; budgetMicros: bigint; spentMicros: bigint }
  | { kind: 'spent_differs'; keyId: string; spentMicros: bigint; chargesMicros: bigint }
  | { kind: 'reservation_left'; keyId: string; reservedMicros: bigint };

export type DriftKind = JobDrift['kind'] | RequestDrift['kind'] | KeyDrift['kind'] | 'totals_differ';

export interface AuditTotals {
  /** What fal billed: the sum of the billing log. */
  falBilledMicros: bigint;
  /** What the ledger recorded as upstream cost: the sum over its jobs. */
  ledgerUpstreamMicros: bigint;
  /** What callers were charged. */
  callerChargedMicros: bigint;
  billedJobs: number;
  ledgerJobs: number;
}

export interface AuditReport {
  clean: boolean;
  totals: AuditTotals;
  jobs: JobDrift[];
  requests: RequestDrift[];
  keys: KeyDrift[];
  /** Drift found, by kind (only kinds that occur). */
  counts: Partial<Record<DriftKind, number>>;
}

/** What fal says, beside its bill: every job id it gave out (the emulator's job list), when known. */
export interface FalSide {
  billing: readonly BilledJob[];
  jobIds?: ReadonlySet<string> | undefined;
}

export function auditBilling(ledger: LedgerSnapshot, fal: FalSide | readonly BilledJob[], answers: readonly CallerAnswer[]): AuditReport {
  const { billing, jobIds } = Array.isArray(fal) ? { billing: fal as readonly BilledJob[], jobIds: undefined } : (fal as FalSide);
  const jobs = auditJobs(ledger.jobs, billing, jobIds);
  const requests = auditRequests(ledger.requests, answers);
  const keys = auditKeys(ledger.keys, ledger.requests);
  const totals: AuditTotals = {
    falBilledMicros: billing.reduce((s, b) => s + parseUsd(b.usd), 0n),
    ledgerUpstreamMicros: ledger.jobs.reduce((s, j) => s + j.upstreamCostMicros, 0n),
    callerChargedMicros: ledger.requests.reduce((s, r) => s + r.chargeMicros, 0n),
    billedJobs: billing.length,
    ledgerJobs: ledger.jobs.length,
  };
  const counts: Partial<Record<DriftKind, number>> = {};
  for (const d of [...jobs, ...requests, ...keys]) counts[d.kind] = (counts[d.kind] ?? 0) + 1;
  const totalsEqual = totals.falBilledMicros === totals.ledgerUpstreamMicros;
  if (!totalsEqual) counts.totals_differ = 1;
  return { clean: totalsEqual && jobs.length + requests.length + keys.length === 0, totals, jobs, requests, keys, counts };
}

function auditJobs(ledgerJobs: readonly LedgerJob[], billing: readonly BilledJob[], falJobIds: ReadonlySet<string> | undefined): JobDrift[] {
  const retryIds = new Set(billing.flatMap((b) => (b.gateway_request_id && b.gateway_request_id !== b.request_id ? [b.gateway_request_id] : [])));
  const out: JobDrift[] = [];
  const byFalId = new Map<string, LedgerJob[]>();
  for (const j of ledgerJobs) {
    for (const id of new Set(j.falIds)) byFalId.set(id, [...(byFalId.get(id) ?? []), j]);
  }
  const billedJobIds = new Set<string>();
  for (const b of billing) {
    const billedMicros = parseUsd(b.usd);
    const found = byFalId.get(b.request_id) ?? [];
    if (found.length === 0) out.push({ kind: 'billed_job_missing', falId: b.request_id, billedMicros });
    else if (found.length > 1) out.push({ kind: 'billed_job_twice', falId: b.request_id, jobIds: found.map((j) => j.id), billedMicros });
    else if (found[0]!.upstreamCostMicros !== billedMicros) {
      const j = found[0]!;
      out.push({ kind: 'cost_differs', falId: b.request_id, jobId: j.id, requestId: j.requestId, billedMicros, ledgerMicros: j.upstreamCostMicros });
    }
    for (const j of found) billedJobIds.add(j.id);
  }
  for (const j of ledgerJobs) {
    if (!billedJobIds.has(j.id) && j.upstreamCostMicros !== 0n) {
      out.push({ kind: 'cost_not_billed', jobId: j.id, requestId: j.requestId, ledgerMicros: j.upstreamCostMicros });
    }
    if (!j.final) out.push({ kind: 'job_not_final', jobId: j.id, requestId: j.requestId, state: j.state });
    // A refused submit's `x-fal-request-id` names no job: a row under it is a
    // phantom, unless the ledger closed it as `refused` (fal was asked and
    // knows no such job). A runner retry's id names the same job as its submit id.
    const known = (id: string) => falJobIds!.has(id) || retryIds.has(id);
    const phantom = falJobIds && j.state !== 'refused' && j.falIds.find((id) => !known(id));
    if (phantom) out.push({ kind: 'job_unknown_to_fal', jobId: j.id, requestId: j.requestId, falId: phantom, state: j.state });
  }
  return out;
}

function auditRequests(rows: readonly LedgerRequest[], answers: readonly CallerAnswer[]): RequestDrift[] {
  const out: RequestDrift[] = [];
  // An answer names its request by the caller's label when one was sent (labels here are unique across keys), else by our id.
  const byId = new Map(rows.flatMap((r) => [[r.id, r] as const, ...(r.clientRequestId ? [[r.clientRequestId, r] as const] : [])]));
  for (const a of answers) {
    const row = byId.get(a.requestId);
    if (a.status === 200) {
      const header = a.costUsd === undefined || a.costUsd === null ? null : parseUsd(a.costUsd);
      if (!row) out.push({ kind: 'ok_not_in_ledger', requestId: a.requestId, headerMicros: header });
      else if (header === null) out.push({ kind: 'ok_without_cost_header', requestId: a.requestId, chargeMicros: row.chargeMicros });
      else if (row.chargeMicros !== header) {
        out.push({ kind: 'ok_charge_differs', requestId: a.requestId, state: row.state, headerMicros: header, chargeMicros: row.chargeMicros });
      }
    } else if (a.status !== null && row && row.chargeMicros !== 0n) {
      out.push({ kind: 'error_charged', requestId: a.requestId, status: a.status, state: row.state, chargeMicros: row.chargeMicros });
    }
  }
  for (const r of rows) if (r.holding) out.push({ kind: 'hold_open', requestId: r.id, keyId: r.keyId, state: r.state });
  return out;
}

function auditKeys(keys: readonly LedgerKey[], requests: readonly LedgerRequest[]): KeyDrift[] {
  const out: KeyDrift[] = [];
  const charges = new Map<string, bigint>();
  for (const r of requests) charges.set(r.keyId, (charges.get(r.keyId) ?? 0n) + r.chargeMicros);
  for (const k of keys) {
    if (k.budgetMicros !== null && k.spentMicros > k.budgetMicros) out.push({ kind: 'over_budget', keyId: k.id, budgetMicros: k.budgetMicros, spentMicros: k.spentMicros });
    const sum = charges.get(k.id) ?? 0n;
    // A key without a budget keeps no counter on its row: its requests' rows are its usage (docs/LEDGER-COST.md).
    if (k.budgetMicros !== null && k.spentMicros !== sum) out.push({ kind: 'spent_differs', keyId: k.id, spentMicros: k.spentMicros, chargesMicros: sum });
    if (k.reservedMicros !== 0n) out.push({ kind: 'reservation_left', keyId: k.id, reservedMicros: k.reservedMicros });
  }
  return out;
}

export async function auditLedger(db: Kysely<DB>, fal: FalSide, answers: readonly CallerAnswer[]): Promise<AuditReport> {
  return auditBilling(await readLedger(db), fal, answers);
}

// ---- The report, for a failure message and the bench. ---------------------

/** Names a fal job or a request in the report (e.g. the soak's scenario); undefined leaves it bare. */
export type Labeller = (id: string) => string | undefined;

export function formatAudit(report: AuditReport, label: Labeller = () => undefined, limit = 40): string {
  const t = report.totals;
  const lines = [
    `fal billed $${formatUsd(t.falBilledMicros)} in ${t.billedJobs} jobs; the ledger holds $${formatUsd(t.ledgerUpstreamMicros)} of upstream cost in ${t.ledgerJobs} jobs ` +
      `(difference $${formatUsd(t.falBilledMicros - t.ledgerUpstreamMicros)}); callers charged $${formatUsd(t.callerChargedMicros)}`,
  ];
  const kinds = Object.entries(report.counts).map(([k, n]) => `${k} ${n}`);
  lines.push(report.clean ? 'clean: no drift' : `drift: ${kinds.join(', ')}`);
  const all = [...report.jobs, ...report.requests, ...report.keys];
  for (const d of all.slice(0, limit)) lines.push(`  ${describeDrift(d, label)}`);
  if (all.length > limit) lines.push(`  ... and ${all.length - limit} more`);
  return lines.join('\n');
}

function named(id: string, label: Labeller): string {
  const l = label(id);
  return l ? `${id} (${l})` : id;
}

const usd = (m: bigint) => `$${formatUsd(m)}`;

export function describeDrift(d: JobDrift | RequestDrift | KeyDrift, label: Labeller = () => undefined): string {
  switch (d.kind) {
    case 'billed_job_missing':
      return `fal job ${named(d.falId, label)}: fal billed ${usd(d.billedMicros)}, no ledger job`;
    case 'billed_job_twice':
      return `fal job ${named(d.falId, label)}: fal billed ${usd(d.billedMicros)} once, ${d.jobIds.length} ledger jobs carry it (${d.jobIds.join(', ')})`;
    case 'cost_differs':
      return `fal job ${d.falId} of request ${named(d.requestId, label)}: fal billed ${usd(d.billedMicros)}, ledger upstream cost ${usd(d.ledgerMicros)}`;
    case 'cost_not_billed':
      return `ledger job ${d.jobId} of request ${named(d.requestId, label)}: upstream cost ${usd(d.ledgerMicros)} fal never billed`;
    case 'job_not_final':
      return `ledger job ${d.jobId} of request ${named(d.requestId, label)}: still ${d.state} after fal finished every job`;
    case 'job_unknown_to_fal':
      return `ledger job ${d.jobId} of request ${named(d.requestId, label)}: ${d.state}, under fal id ${d.falId} that fal never gave a job`;
    case 'ok_not_in_ledger':
      return `request ${named(d.requestId, label)}: answered 200 (x-usage-cost-usd ${d.headerMicros === null ? 'absent' : usd(d.headerMicros)}), no ledger row`;
    case 'ok_without_cost_header':
      return `request ${named(d.requestId, label)}: answered 200 without x-usage-cost-usd, charged ${usd(d.chargeMicros)}`;
    case 'ok_charge_differs':
      return `request ${named(d.requestId, label)}: answered 200 at ${usd(d.headerMicros)}, ledger charged ${usd(d.chargeMicros)} (${d.state})`;
    case 'error_charged':
      return `request ${named(d.requestId, label)}: answered ${d.status}, yet charged ${usd(d.chargeMicros)} (${d.state})`;
    case 'hold_open':
      return `request ${named(d.requestId, label)} of key ${d.keyId}: still ${d.state}, its reservation held`;
    case 'over_budget':
      return `key ${d.keyId}: spent ${usd(d.spentMicros)} of a ${usd(d.budgetMicros)} budget`;
    case 'spent_differs':
      return `key ${d.keyId}: spent ${usd(d.spentMicros)}, its requests' charges sum to ${usd(d.chargesMicros)}`;
    case 'reservation_left':
      return `key ${d.keyId}: ${usd(d.reservedMicros)} still reserved`;
  }
}
