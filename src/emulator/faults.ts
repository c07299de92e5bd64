/**
 * Armed faults. A fault names the phase it hits and is matched by endpoint id
 * and/or prompt substring; each HTTP call it matches uses up one of its
 * `times`. Call faults change the answer to one HTTP call; job faults are
 * taken when a job is created (submit or run) and shape that job's life.
 */
import { randomUUID } from 'node:crypto';

export const PHASES = ['submit', 'status', 'stream', 'result', 'cancel', 'run', 'upload'] as const;
export type FaultPhase = (typeof PHASES)[number];

export const CALL_KINDS = ['http_error', 'delay', 'reset', 'non_json', 'cancel_refused'] as const;
export const JOB_KINDS = [
  'never_finish',
  'nsfw',
  'fail_after_start',
  'latency',
  'ignore_sync_mode',
  'escape_slashes',
  'runner_retry',
  'omit_dimensions',
  'content_policy',
  'lora_download_failed',
  'webhook_payload_error',
  'submit_validation',
] as const;
export type CallKind = (typeof CALL_KINDS)[number];
export type JobKind = (typeof JOB_KINDS)[number];
export type FaultKind = CallKind | JobKind;

export interface FaultSpec {
  /** Inferred as "http_error" when only `status` is given. */
  kind?: FaultKind;
  /** Required for http_error, delay, reset and non_json; job kinds hit submit and run. */
  phase?: FaultPhase | FaultPhase[];
  /** Exact endpoint id (for status/result/cancel: the job's endpoint). */
  endpoint?: string;
  /** Substring of the prompt (for status/result/cancel: the job's prompt). */
  prompt_contains?: string;
  /** How many matching HTTP calls the fault hits; default 1. */
  times?: number;
  /** http_error: 400..599. non_json: default 200. fail_after_start: default 500. */
  status?: number;
  /** Replaces the JSON `detail` (http_error, fail_after_start). */
  detail?: unknown;
  /** http_error 429/503: `retry-after` seconds; default 1 for 429. */
  retry_after?: number;
  /** Extra response headers (http_error, non_json). */
  headers?: Record<string, string>;
  /** non_json: the body to send; default a small HTML page. */
  body?: string;
  /** Wait this long before answering (any kind; the whole fault for kind "delay"). */
  delay_ms?: number;
  /** nsfw: image indexes flagged (default [0]). */
  nsfw_indexes?: number[];
  /** latency: total queue + inference time of the job. */
  latency_ms?: number;
  /** latency: the queued part of latency_ms (default a quarter). */
  queue_ms?: number;
  /** cancel_refused: "rejected" answers 400 ALREADY_COMPLETED; "ignored" answers 202 and runs on. */
  mode?: 'rejected' | 'ignored';
  /** submit/run call faults: create the job (it runs and bills) before failing the call. */
  commit?: boolean;
  /**
   * fail_after_start, content_policy, lora_download_failed: the units the
   * failed job bills (decimal string). Default: the price row's `error_units`
   * for 4xx app errors, "0" for fal's own 5xx.
   */
  billable_units?: string;
  /** http_error, fail_after_start: the `error_type` / `X-Fal-Error-Type` (default from the status, fal's table). */
  error_type?: string;
  /** http_error, fail_after_start: the `X-Fal-Retryable` value (default from the status). */
  retryable?: boolean;
  /** content_policy: the flagged categories (default ["sexual"]). */
  categories?: string[];
}

export interface ArmedFault extends FaultSpec {
  id: string;
  kind: FaultKind;
  phase: FaultPhase[];
  times: number;
  remaining: number;
  hits: number;
}

export class FaultSpecError extends Error {
  override name = 'FaultSpecError';
}

const isKind = (k: unknown): k is FaultKind =>
  (CALL_KINDS as readonly unknown[]).includes(k) || (JOB_KINDS as readonly unknown[]).includes(k);

export function isJobKind(k: FaultKind): k is JobKind {
  return (JOB_KINDS as readonly string[]).includes(k);
}

const nonNegInt = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** Validates a spec and fills in defaults; throws FaultSpecError with a readable reason. */
export function normalizeFault(raw: unknown, fallbackPhase?: FaultPhase): Omit<ArmedFault, 'id' | 'remaining' | 'hits'> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new FaultSpecError('a fault must be a JSON object');
  const spec = { ...(raw as FaultSpec) };
  const kind: unknown = spec.kind ?? (spec.status !== undefined ? 'http_error' : undefined);
  if (!isKind(kind)) {
    throw new FaultSpecError(`kind must be one of ${[...CALL_KINDS, ...JOB_KINDS].join(', ')} (or give "status" for http_error)`);
  }
  let phase: FaultPhase[];
  if (spec.phase === undefined) {
    if (isJobKind(kind)) phase = ['submit', 'run'];
    else if (kind === 'cancel_refused') phase = ['cancel'];
    else if (fallbackPhase) phase = [fallbackPhase];
    else throw new FaultSpecError(`kind ${kind} needs a "phase" (${PHASES.join(', ')})`);
  } else {
    phase = Array.isArray(spec.phase) ? spec.phase : [spec.phase];
    for (const p of phase) if (!(PHASES as readonly string[]).includes(p)) throw new FaultSpecError(`unknown phase ${JSON.stringify(p)}`);
  }
  if (isJobKind(kind) && phase.some((p) => p !== 'submit' && p !== 'run')) {
    throw new FaultSpecError(`kind ${kind} acts when a job is created: phase must be submit and/or run`);
  }
  if (kind === 'cancel_refused' && phase.some((p) => p !== 'cancel')) throw new FaultSpecError('cancel_refused only applies to phase cancel');
  const times = spec.times ?? 1;
  if (typeof times !== 'number' || !Number.isInteger(times) || times < 1) throw new FaultSpecError('times must be an integer >= 1');
  if (kind === 'http_error') {
    if (typeof spec.status !== 'number' || !Number.isInteger(spec.status) || spec.status < 400 || spec.status > 599) {
      throw new FaultSpecError('http_error needs an integer status between 400 and 599');
    }
  } else if (spec.status !== undefined && (typeof spec.status !== 'number' || !Number.isInteger(spec.status) || spec.status < 200 || spec.status > 599)) {
    throw new FaultSpecError('status must be an integer between 200 and 599');
  }
  if (spec.delay_ms !== undefined && !nonNegInt(spec.delay_ms)) throw new FaultSpecError('delay_ms must be a non-negative integer');
  if (kind === 'delay' && spec.delay_ms === undefined) throw new FaultSpecError('delay needs delay_ms');
  if (spec.retry_after !== undefined && !nonNegInt(spec.retry_after)) throw new FaultSpecError('retry_after must be a non-negative integer (seconds)');
  if (kind === 'latency') {
    if (!nonNegInt(spec.latency_ms)) throw new FaultSpecError('latency needs latency_ms (non-negative integer)');
    if (spec.queue_ms !== undefined && (!nonNegInt(spec.queue_ms) || spec.queue_ms > (spec.latency_ms as number))) {
      throw new FaultSpecError('queue_ms must be a non-negative integer no larger than latency_ms');
    }
  }
  if (spec.nsfw_indexes !== undefined && (!Array.isArray(spec.nsfw_indexes) || !spec.nsfw_indexes.every(nonNegInt))) {
    throw new FaultSpecError('nsfw_indexes must be an array of non-negative integers');
  }
  if (spec.billable_units !== undefined && (typeof spec.billable_units !== 'string' || !/^\d+(\.\d+)?$/.test(spec.billable_units))) {
    throw new FaultSpecError('billable_units must be a decimal string such as "1" or "0.5"');
  }
  if (spec.error_type !== undefined && (typeof spec.error_type !== 'string' || spec.error_type === '')) throw new FaultSpecError('error_type must be a string');
  if (spec.retryable !== undefined && typeof spec.retryable !== 'boolean') throw new FaultSpecError('retryable must be a boolean');
  if (spec.categories !== undefined && (!Array.isArray(spec.categories) || !spec.categories.every((c) => typeof c === 'string'))) {
    throw new FaultSpecError('categories must be an array of strings');
  }
  if (spec.mode !== undefined && spec.mode !== 'rejected' && spec.mode !== 'ignored') throw new FaultSpecError('mode must be "rejected" or "ignored"');
  if (spec.endpoint !== undefined && typeof spec.endpoint !== 'string') throw new FaultSpecError('endpoint must be a string');
  if (spec.prompt_contains !== undefined && typeof spec.prompt_contains !== 'string') throw new FaultSpecError('prompt_contains must be a string');
  if (spec.body !== undefined && typeof spec.body !== 'string') throw new FaultSpecError('body must be a string');
  if (spec.headers !== undefined) {
    if (typeof spec.headers !== 'object' || spec.headers === null || Object.values(spec.headers).some((v) => typeof v !== 'string')) {
      throw new FaultSpecError('headers must be an object of strings');
    }
  }
  return { ...spec, kind, phase, times };
}

export interface MatchContext {
  endpoint?: string | undefined;
  prompt?: string | undefined;
}

export interface FaultBook {
  arm(raw: unknown): ArmedFault[];
  list(): ArmedFault[];
  clear(): void;
  /** Takes (uses up one occurrence of) the first armed fault matching. */
  take(phase: FaultPhase, kinds: readonly FaultKind[], ctx: MatchContext): ArmedFault | undefined;
}

export function createFaultBook(): FaultBook {
  let armed: ArmedFault[] = [];
  const matches = (f: ArmedFault, phase: FaultPhase, kinds: readonly FaultKind[], ctx: MatchContext) =>
    f.remaining > 0 &&
    f.phase.includes(phase) &&
    kinds.includes(f.kind) &&
    (f.endpoint === undefined || f.endpoint === ctx.endpoint) &&
    (f.prompt_contains === undefined || (ctx.prompt ?? '').includes(f.prompt_contains));
  return {
    arm(raw) {
      const list = Array.isArray(raw)
        ? raw
        : typeof raw === 'object' && raw !== null && Array.isArray((raw as { faults?: unknown }).faults)
          ? ((raw as { faults: unknown[] }).faults)
          : [raw];
      const made = list.map((r) => {
        const n = normalizeFault(r);
        return { ...n, id: randomUUID(), remaining: n.times, hits: 0 };
      });
      armed.push(...made);
      return made.map((f) => ({ ...f }));
    },
    list: () => armed.map((f) => ({ ...f })),
    clear() {
      armed = [];
    },
    take(phase, kinds, ctx) {
      const f = armed.find((x) => matches(x, phase, kinds, ctx));
      if (!f) return undefined;
      f.remaining -= 1;
      f.hits += 1;
      return { ...f };
    },
  };
}
