import { createHash } from 'node:crypto';

/**
 * Finding a submit whose answer was lost (a connection reset after sending, a
 * timeout, a 5xx or unreadable answer without an id): fal may have made and
 * billed the job, and only fal's request listing can say
 * (https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint,
 * REFERENCE §3b). Pure decisions, no I/O: reconcile.ts lists the endpoint's
 * requests and applies what this module concludes.
 *
 * A job is recognised by what it was sent: every job row keeps the hash of
 * the canonical JSON of the exact input submitted (written with the row, at
 * reservation), and a listed request matches when its `json_input` hashes
 * the same, fal received it within the job's submit window, and its id is
 * not already another job's in the ledger.
 */

/**
 * How long a submit may take (the job runner's bound on it). A submit is
 * never cut by the request's stop (a sibling's failure, the caller leaving,
 * the deadline): cut in flight it may have made a job we never learn of. It
 * runs to its answer, bounded by this, and a job it made is then cancelled
 * through fal. It also closes the window in which fal's request listing is
 * searched for a lost submit (`submitWindow`).
 */
export const SUBMIT_TIMEOUT_MS = 60_000;

/** JSON with object keys sorted at every level and no whitespace: the same value always gives the same text. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}

/** What identifies a job's input: hex SHA-256 of its canonical JSON. */
export function inputHash(input: unknown): string {
  return createHash('sha256').update(canonicalJson(input)).digest('hex');
}

/**
 * How far fal's clock (its `sent_at`) and ours may disagree, both kept by
 * NTP: the window starts this long before the job's row was written and
 * ends this long after its submit's timeout.
 */
export const CLOCK_SKEW_MS = 5_000;

export interface SubmitWindow {
  /** Inclusive, ms since the epoch. */
  start: number;
  /** Exclusive, ms since the epoch. */
  end: number;
}

/**
 * When fal can have received a job's submit: the row is written before the
 * submit leaves, and the submit gives up after `submitTimeoutMs`. A process
 * sends nothing once its lease has expired (it died, or it stops submitting
 * when it cannot renew: lease-store.ts), so for a request whose owner's
 * lease expired at `ownerExpiredAtMs` the window ends there: a dead
 * process's lost submit is settled as soon as its lease runs out.
 */
export function submitWindow(createdAtMs: number, submitTimeoutMs: number, ownerExpiredAtMs?: number): SubmitWindow {
  const lastSend = Math.min(createdAtMs + submitTimeoutMs, ownerExpiredAtMs ?? Number.POSITIVE_INFINITY);
  return { start: createdAtMs - CLOCK_SKEW_MS, end: Math.max(createdAtMs, lastSend) + CLOCK_SKEW_MS };
}

/** A request fal lists, reduced to what matching needs: its input hashed (null when fal stored no input). */
export interface ListedInput {
  requestId: string;
  sentAtMs: number | null;
  inputHash: string | null;
}

export interface LostJob {
  inputHash: string | null;
  createdAtMs: number;
}

export type LostSubmitVerdict =
  /** fal has the job: record its id, then it is settled like any job. */
  | { kind: 'found'; falRequestId: string }
  /** The window is closed, fal listed it whole, and nothing matches: no job was made. */
  | { kind: 'absent' }
  /** The window is still open: a submit may still be on its way. */
  | { kind: 'pending' }
  /** Requests in the window whose input fal did not store (or a job with no hash): cannot tell. */
  | { kind: 'unmatchable'; unreadable: number };

/**
 * What fal's listing (`items`, read whole for the job's window) says of a
 * lost submit. `taken`: ids a job in the ledger already holds, or another
 * lost job claimed this round. Of several matches the one fal received
 * nearest the row's creation is taken (same input, same price either way).
 */
export function judgeLostSubmit(job: LostJob, items: readonly ListedInput[], taken: ReadonlySet<string>, window: SubmitWindow, nowMs: number): LostSubmitVerdict {
  const inWindow = items.filter((i) => i.sentAtMs === null || (i.sentAtMs >= window.start && i.sentAtMs < window.end));
  if (job.inputHash !== null) {
    const distance = (i: ListedInput) => Math.abs((i.sentAtMs ?? job.createdAtMs) - job.createdAtMs);
    const matches = inWindow.filter((i) => i.inputHash === job.inputHash && !taken.has(i.requestId)).sort((a, b) => distance(a) - distance(b));
    if (matches.length > 0) return { kind: 'found', falRequestId: matches[0]!.requestId };
  }
  if (nowMs < window.end) return { kind: 'pending' };
  const unreadable = inWindow.filter((i) => i.inputHash === null && !taken.has(i.requestId)).length;
  if (job.inputHash === null || unreadable > 0) return { kind: 'unmatchable', unreadable };
  return { kind: 'absent' };
}

/** Jobs grouped so that each group's windows overlap: one listing per group. */
export function groupByWindow<J extends { endpoint: string; window: SubmitWindow }>(jobs: readonly J[]): Array<{ endpoint: string; window: SubmitWindow; jobs: J[] }> {
  const groups: Array<{ endpoint: string; window: SubmitWindow; jobs: J[] }> = [];
  const sorted = [...jobs].sort((a, b) => a.endpoint.localeCompare(b.endpoint) || a.window.start - b.window.start);
  for (const j of sorted) {
    const last = groups.at(-1);
    if (last && last.endpoint === j.endpoint && j.window.start <= last.window.end) {
      last.window = { start: last.window.start, end: Math.max(last.window.end, j.window.end) };
      last.jobs.push(j);
    } else groups.push({ endpoint: j.endpoint, window: { ...j.window }, jobs: [j] });
  }
  return groups;
}
