/**
 * The job engine: queue → in progress → completed, one timer per job at a
 * time (no polling loops, so 10,000 waiting jobs cost 10,000 timers and
 * nothing else), fal's billing rule (completed and successful only), and the
 * billing log. HTTP lives elsewhere; this file knows no sockets.
 */
import { randomInt, randomUUID } from 'node:crypto';
import type { EndpointSpec } from './endpoints.js';
import { IMAGE_SIZE_PRESETS, promptHash, type ImageFormat, type ImageMode, type RenderSpec } from './images.js';
import { priceJob, type Charge, type PriceTable } from './pricing.js';

export type JobStatus = 'IN_QUEUE' | 'IN_PROGRESS' | 'COMPLETED';
export type JobOutcome = 'pending' | 'ok' | 'error' | 'cancelled';

export interface JobWebhook {
  url: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: number;
}

/** Everything about a job; plain data so it can be persisted as JSON. */
export interface JobRecord {
  request_id: string;
  seq: number;
  endpoint: string;
  via: 'queue' | 'run';
  /** The body as received. */
  input: Record<string, unknown>;
  /** The validated input with fal's defaults applied. */
  resolved: Record<string, unknown>;
  status: JobStatus;
  outcome: JobOutcome;
  seed: number;
  image_mode: ImageMode;
  submitted_at: number;
  /** Planned times (ms since epoch); `done_at` is meaningless when never_finish. */
  start_at: number;
  done_at: number;
  started_at?: number;
  completed_at?: number;
  never_finish?: boolean;
  nsfw_indexes?: number[];
  /** Answer with image URLs even when `sync_mode` asked for data URIs. */
  ignore_sync_mode?: boolean;
  /** Write the result JSON with every `/` escaped as `\/` (same values, other bytes). */
  escape_slashes?: boolean;
  fail?: { status: number; detail: unknown };
  error?: { status: number; body: unknown };
  images?: RenderSpec[];
  has_nsfw_concepts?: boolean[];
  charge?: Charge;
  webhook?: JobWebhook;
  priority?: string;
}

export interface BillingEntry {
  request_id: string;
  endpoint: string;
  /** Billable quantity in `unit`, decimal string. */
  units: string;
  /** USD charged, decimal string (includes prompt_expansion_usd). */
  usd: string;
  unit: string;
  num_images: number;
  prompt_expansion_usd: string;
  completed_at: string;
}

export type JobEvent = 'queued' | 'started' | 'completed' | 'removed';

export interface JobFaults {
  neverFinish?: boolean;
  nsfwIndexes?: number[];
  ignoreSyncMode?: boolean;
  escapeSlashes?: boolean;
  fail?: { status: number; detail: unknown };
  latency?: { totalMs: number; queueMs?: number };
}

export interface CreateJobOptions {
  via: 'queue' | 'run';
  webhookUrl?: string | undefined;
  priority?: string | undefined;
  faults?: JobFaults;
}

export interface EngineOptions {
  latencyMs: number;
  imageMode: ImageMode;
  prices: () => PriceTable;
  endpoints: ReadonlyMap<string, EndpointSpec>;
  /** Called after every state change (persistence, webhooks, stream updates). */
  onEvent: (job: JobRecord, event: JobEvent) => void;
  onError: (err: unknown, job: JobRecord) => void;
  maxJobs: number;
}

/**
 * Counts queued jobs by submission order so `queue_position` is O(log n)
 * even with thousands of jobs waiting.
 */
class Fenwick {
  private tree = new Int32Array(1024);
  private members = new Set<number>();
  add(i: number, delta: 1 | -1): void {
    if (delta === 1) {
      if (this.members.has(i)) return;
      this.members.add(i);
      if (i >= this.tree.length) {
        this.rebuild(i);
        return;
      }
    } else if (!this.members.delete(i)) {
      return;
    }
    for (let k = i + 1; k <= this.tree.length; k += k & -k) this.tree[k - 1]! += delta;
  }
  /** Number of members strictly below i. */
  before(i: number): number {
    let sum = 0;
    for (let k = Math.min(i, this.tree.length); k > 0; k -= k & -k) sum += this.tree[k - 1]!;
    return sum;
  }
  clear(): void {
    this.tree = new Int32Array(1024);
    this.members.clear();
  }
  private rebuild(i: number): void {
    let size = this.tree.length;
    while (size <= i) size *= 2;
    this.tree = new Int32Array(size);
    for (const m of this.members) for (let k = m + 1; k <= size; k += k & -k) this.tree[k - 1]! += 1;
  }
}

export function imageDims(resolved: Record<string, unknown>): { width: number; height: number } {
  const size = resolved.image_size;
  if (typeof size === 'string') return IMAGE_SIZE_PRESETS[size] ?? { width: 1024, height: 768 };
  const o = (size ?? {}) as { width?: number; height?: number };
  return { width: o.width ?? 512, height: o.height ?? 512 };
}

export interface Engine {
  create(endpoint: EndpointSpec, input: Record<string, unknown>, resolved: Record<string, unknown>, opts: CreateJobOptions): JobRecord;
  get(id: string): JobRecord | undefined;
  list(): JobRecord[];
  queuePosition(job: JobRecord): number;
  cancel(id: string): 'cancelled' | 'already_completed' | 'not_found';
  /** Completes a job now (releases a never_finish job). */
  finishNow(id: string): boolean;
  billing(): BillingEntry[];
  restore(jobs: JobRecord[], billing: BillingEntry[], seq: number): void;
  readonly seq: number;
  clear(): void;
  close(): void;
}

export function createEngine(opts: EngineOptions): Engine {
  const jobs = new Map<string, JobRecord>();
  const timers = new Map<string, NodeJS.Timeout>();
  const queued = new Fenwick();
  let billing: BillingEntry[] = [];
  let seq = 0;

  const setTimer = (job: JobRecord, at: number, fn: () => void) => {
    clearTimer(job.request_id);
    const t = setTimeout(() => {
      timers.delete(job.request_id);
      fn();
    }, Math.max(0, at - Date.now()));
    t.unref();
    timers.set(job.request_id, t);
  };
  const clearTimer = (id: string) => {
    const t = timers.get(id);
    if (t) {
      clearTimeout(t);
      timers.delete(id);
    }
  };

  const emit = (job: JobRecord, event: JobEvent) => {
    try {
      opts.onEvent(job, event);
    } catch (err) {
      opts.onError(err, job);
    }
  };

  const start = (job: JobRecord) => {
    queued.add(job.seq, -1);
    job.status = 'IN_PROGRESS';
    job.started_at = Date.now();
    emit(job, 'started');
    if (!job.never_finish) setTimer(job, job.done_at, () => finish(job));
  };

  const finish = (job: JobRecord) => {
    if (job.status === 'COMPLETED') return;
    clearTimer(job.request_id);
    if (job.status === 'IN_QUEUE') queued.add(job.seq, -1);
    if (!job.started_at) job.started_at = Date.now();
    job.status = 'COMPLETED';
    job.completed_at = Date.now();
    const r = job.resolved;
    const { width, height } = imageDims(r);
    const format = (r.output_format as ImageFormat | undefined) ?? 'png';
    const n = typeof r.num_images === 'number' ? r.num_images : 1;
    const safety = r.enable_safety_checker !== false;
    const flagged = new Set(job.nsfw_indexes ?? []);
    const hash = promptHash(String(r.prompt ?? ''));
    job.images = [];
    job.has_nsfw_concepts = [];
    for (let i = 0; i < n; i++) {
      const nsfw = flagged.has(i);
      job.has_nsfw_concepts.push(nsfw);
      if (nsfw && safety) job.images.push({ kind: 'b', width, height, format });
      else if (job.image_mode === 'cheap') job.images.push({ kind: 'c', width, height, format });
      else job.images.push({ kind: 'e', width, height, format, seed: job.seed, index: i, promptHash: hash });
    }
    if (job.fail) {
      job.outcome = 'error';
      job.error = { status: job.fail.status, body: { detail: job.fail.detail } };
    } else {
      const spec = opts.endpoints.get(job.endpoint);
      try {
        if (!spec) throw new Error(`endpoint ${job.endpoint} is no longer served`);
        const charge = priceJob(opts.prices(), spec.priceKey, {
          images: job.images,
          promptExpansion: r.enable_prompt_expansion === true,
        });
        job.charge = charge;
        job.outcome = 'ok';
        billing.push({
          request_id: job.request_id,
          endpoint: job.endpoint,
          units: charge.units,
          usd: charge.usd,
          unit: charge.unit,
          num_images: n,
          prompt_expansion_usd: charge.prompt_expansion_usd,
          completed_at: new Date(job.completed_at).toISOString(),
        });
      } catch (err) {
        // A job the emulator cannot price must not look billed-at-zero.
        opts.onError(err, job);
        job.outcome = 'error';
        job.error = { status: 500, body: { detail: `Emulator cannot price this job: ${(err as Error).message}` } };
      }
    }
    emit(job, 'completed');
  };

  const schedule = (job: JobRecord) => {
    const now = Date.now();
    if (job.status === 'COMPLETED') return;
    if (now < job.start_at) {
      job.status = 'IN_QUEUE';
      queued.add(job.seq, 1);
      setTimer(job, job.start_at, () => start(job));
    } else if (job.never_finish || now < job.done_at) {
      job.status = 'IN_PROGRESS';
      job.started_at ??= job.start_at;
      if (!job.never_finish) setTimer(job, job.done_at, () => finish(job));
    } else {
      job.status = 'IN_PROGRESS';
      job.started_at ??= job.start_at;
      // Already due (e.g. restored after a restart): complete on the next tick
      // so callers see the job first.
      setTimer(job, now, () => finish(job));
    }
  };

  const evict = () => {
    if (jobs.size <= opts.maxJobs) return;
    for (const [id, j] of jobs) {
      if (jobs.size <= opts.maxJobs) break;
      if (j.status !== 'COMPLETED') continue;
      jobs.delete(id);
      emit(j, 'removed');
    }
  };

  return {
    get seq() {
      return seq;
    },
    create(endpoint, input, resolved, o) {
      const now = Date.now();
      const f = o.faults ?? {};
      const total = f.latency?.totalMs ?? opts.latencyMs;
      const queueMs = f.latency?.queueMs ?? Math.floor(total / 4);
      const seed = typeof resolved.seed === 'number' ? resolved.seed : randomInt(1, 2 ** 47);
      const job: JobRecord = {
        request_id: randomUUID(),
        seq: ++seq,
        endpoint: endpoint.id,
        via: o.via,
        input,
        resolved: { ...resolved, seed },
        status: 'IN_QUEUE',
        outcome: 'pending',
        seed,
        image_mode: opts.imageMode,
        submitted_at: now,
        start_at: now + queueMs,
        done_at: now + total,
      };
      if (f.neverFinish) job.never_finish = true;
      if (f.nsfwIndexes) job.nsfw_indexes = f.nsfwIndexes;
      if (f.ignoreSyncMode) job.ignore_sync_mode = true;
      if (f.escapeSlashes) job.escape_slashes = true;
      if (f.fail) job.fail = f.fail;
      if (o.webhookUrl) job.webhook = { url: o.webhookUrl, state: 'pending', attempts: 0 };
      if (o.priority) job.priority = o.priority;
      jobs.set(job.request_id, job);
      schedule(job);
      emit(job, job.status === 'IN_QUEUE' ? 'queued' : 'started');
      evict();
      return job;
    },
    get: (id) => jobs.get(id),
    list: () => [...jobs.values()],
    queuePosition: (job) => (job.status === 'IN_QUEUE' ? queued.before(job.seq) : 0),
    cancel(id) {
      const job = jobs.get(id);
      if (!job) return 'not_found';
      if (job.status === 'COMPLETED') return 'already_completed';
      clearTimer(id);
      if (job.status === 'IN_QUEUE') queued.add(job.seq, -1);
      job.status = 'COMPLETED';
      job.outcome = 'cancelled';
      job.completed_at = Date.now();
      job.error = { status: 400, body: { detail: 'Request was cancelled' } };
      emit(job, 'completed');
      return 'cancelled';
    },
    finishNow(id) {
      const job = jobs.get(id);
      if (!job || job.status === 'COMPLETED') return false;
      finish(job);
      return true;
    },
    billing: () => billing.slice(),
    restore(list, bill, lastSeq) {
      billing = bill.slice();
      seq = Math.max(seq, lastSeq);
      for (const job of list) {
        jobs.set(job.request_id, job);
        seq = Math.max(seq, job.seq);
        schedule(job);
      }
    },
    clear() {
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
      queued.clear();
      const old = [...jobs.values()];
      jobs.clear();
      billing = [];
      for (const j of old) emit(j, 'removed');
    },
    close() {
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
    },
  };
}
