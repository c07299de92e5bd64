/**
 * The job engine: the life of a fal job, as real fal lives it, and the
 * billing log. HTTP lives elsewhere; this file knows no sockets.
 *
 * - A job waits in the queue for at least its queued time, then for one of
 *   the account's `concurrency` runner slots (fal limits concurrent requests
 *   per account; the excess waits IN_QUEUE with a real queue_position).
 * - A start deadline (`X-Fal-Request-Timeout`) expires a job that has not
 *   started by then: 504 request_timeout, never billed, because it never ran.
 * - A failed job still reports COMPLETED; its error is answered on the result.
 *   fal's own 5xx never bill; app errors (4xx: validation after queueing,
 *   content policy, a LoRA that cannot be downloaded) bill the endpoint's
 *   `error_units` unless the fault says otherwise.
 * - Cancel removes a queued job; a running one is only signalled and runs on,
 *   completes and bills.
 * One timer per job at a time (plus one for a start deadline), no polling
 * loops, so 10,000 waiting jobs cost 10,000 timers and nothing else.
 */
import { randomInt, randomUUID } from 'node:crypto';
import type { EndpointSpec } from './endpoints.js';
import type { ErrorHints } from './errors.js';
import { IMAGE_SIZE_PRESETS, promptHash, type ImageFormat, type ImageMode, type RenderSpec } from './images.js';
import { priceFailure, priceJob, type Charge, type PriceTable } from './pricing.js';

export type JobStatus = 'IN_QUEUE' | 'IN_PROGRESS' | 'COMPLETED';
export type JobOutcome = 'pending' | 'ok' | 'error' | 'cancelled';

export interface JobWebhook {
  url: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: number;
}

/** How a job will fail, decided when it is created. */
export interface JobFailure {
  status: number;
  body: unknown;
  /** `start`: the runner fails at once (validation, LoRA download); `end`: after the inference time. */
  at: 'start' | 'end';
  /** Units billed for the failure; default by status (see the file comment). */
  billable_units?: string;
  hints?: ErrorHints;
}

/** Everything about a job; plain data so it can be persisted as JSON. */
export interface JobRecord {
  request_id: string;
  seq: number;
  endpoint: string;
  via: 'queue' | 'run';
  /** The body as received. */
  input: Record<string, unknown>;
  /** The validated input with fal's defaults applied (the body as received when validation failed). */
  resolved: Record<string, unknown>;
  status: JobStatus;
  outcome: JobOutcome;
  seed: number;
  image_mode: ImageMode;
  submitted_at: number;
  /** Earliest start (end of the queued time), ms since epoch. */
  start_at: number;
  /** Inference time once started. */
  run_ms: number;
  /** Planned completion; set when the job starts, meaningless when never_finish. */
  done_at: number;
  started_at?: number;
  completed_at?: number;
  /** `X-Fal-Request-Timeout`: the job expires unless started by then. */
  start_deadline?: number;
  /** Seconds its media lives (`X-Fal-Object-Lifecycle-Preference`); null = never expires; unset = the emulator's default. */
  media_ttl_s?: number | null;
  cancel_requested_at?: number;
  never_finish?: boolean;
  nsfw_indexes?: number[];
  /** Answer with image URLs even when `sync_mode` asked for data URIs. */
  ignore_sync_mode?: boolean;
  /** Write the result JSON with every `/` escaped as `\/` (same values, other bytes). */
  escape_slashes?: boolean;
  /** fal retried the runner: the result's `x-fal-request-id` and the webhook's gateway_request_id are this. */
  runner_retry?: boolean;
  gateway_request_id?: string;
  /** Output images without width/height (optional in fal's own types). */
  omit_dimensions?: boolean;
  /** The webhook carries `payload: null` and `payload_error`. */
  webhook_payload_error?: boolean;
  fail?: JobFailure;
  error?: { status: number; body: unknown; hints?: ErrorHints };
  images?: RenderSpec[];
  has_nsfw_concepts?: boolean[];
  /** What the job billed, success or failure; absent when it billed nothing. */
  charge?: Charge;
  webhook?: JobWebhook;
  priority?: string;
  /** `X-Fal-Store-IO: 0`: fal keeps this job's input and output out of its request history. */
  store_io?: false;
}

export interface BillingEntry {
  /** The id submit answered: the key a gateway's ledger holds. */
  request_id: string;
  /** Differs from request_id after fal's own runner retry. */
  gateway_request_id: string;
  endpoint: string;
  outcome: 'ok' | 'error';
  /** 200, or the failed job's status. */
  status: number;
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
  runnerRetry?: boolean;
  omitDimensions?: boolean;
  webhookPayloadError?: boolean;
  fail?: JobFailure;
  latency?: { totalMs: number; queueMs?: number };
}

export interface CreateJobOptions {
  via: 'queue' | 'run';
  webhookUrl?: string | undefined;
  priority?: string | undefined;
  /** `X-Fal-Request-Timeout`, seconds. */
  timeoutS?: number | undefined;
  mediaTtlS?: number | null | undefined;
  /** False for `X-Fal-Store-IO: 0`. */
  storeIo?: boolean | undefined;
  faults?: JobFaults;
}

export interface EngineOptions {
  latencyMs: number;
  imageMode: ImageMode;
  prices: () => PriceTable;
  endpoints: ReadonlyMap<string, EndpointSpec>;
  /** Runner slots of the account; Infinity for none. */
  concurrency: number;
  /** App errors (4xx) bill the endpoint's error units. */
  billFailures: boolean;
  /** Cancel stops a running job too (kinder than fal). */
  cancelStopsRunning: boolean;
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
  /** `requested`: the job was running; it was signalled and runs on. */
  cancel(id: string): 'cancelled' | 'requested' | 'already_completed' | 'not_found';
  /** Completes a job now (releases a never_finish job). */
  finishNow(id: string): boolean;
  billing(): BillingEntry[];
  restore(jobs: JobRecord[], billing: BillingEntry[], seq: number): void;
  readonly seq: number;
  /** Jobs holding a runner slot. */
  readonly running: number;
  clear(): void;
  close(): void;
}

export function createEngine(opts: EngineOptions): Engine {
  const jobs = new Map<string, JobRecord>();
  const timers = new Map<string, NodeJS.Timeout>();
  const deadlines = new Map<string, NodeJS.Timeout>();
  const queued = new Fenwick();
  // Jobs past their queued time, waiting for a slot, in the order they became ready.
  let ready: JobRecord[] = [];
  let readyHead = 0;
  let running = 0;
  let billing: BillingEntry[] = [];
  let seq = 0;

  const arm = (map: Map<string, NodeJS.Timeout>, job: JobRecord, at: number, fn: () => void) => {
    disarm(map, job.request_id);
    const t = setTimeout(() => {
      map.delete(job.request_id);
      fn();
    }, Math.max(0, at - Date.now()));
    t.unref();
    map.set(job.request_id, t);
  };
  const disarm = (map: Map<string, NodeJS.Timeout>, id: string) => {
    const t = map.get(id);
    if (t) {
      clearTimeout(t);
      map.delete(id);
    }
  };

  const emit = (job: JobRecord, event: JobEvent) => {
    try {
      opts.onEvent(job, event);
    } catch (err) {
      opts.onError(err, job);
    }
  };

  const pump = () => {
    while (running < opts.concurrency && readyHead < ready.length) {
      const job = ready[readyHead++]!;
      if (job.status === 'IN_QUEUE' && jobs.get(job.request_id) === job) start(job);
    }
    if (readyHead > 1024 && readyHead * 2 > ready.length) {
      ready = ready.slice(readyHead);
      readyHead = 0;
    }
  };

  const onReady = (job: JobRecord) => {
    if (job.status !== 'IN_QUEUE') return;
    ready.push(job);
    pump();
  };

  const start = (job: JobRecord) => {
    queued.add(job.seq, -1);
    disarm(deadlines, job.request_id);
    running += 1;
    job.status = 'IN_PROGRESS';
    job.started_at = Date.now();
    job.done_at = job.started_at + job.run_ms;
    if (job.runner_retry) job.gateway_request_id = randomUUID();
    emit(job, 'started');
    if (job.fail?.at === 'start') arm(timers, job, Date.now(), () => finish(job));
    else if (!job.never_finish) arm(timers, job, job.done_at, () => finish(job));
  };

  /** Leaves the queue or gives back the slot; true if the job held one. */
  const release = (job: JobRecord): void => {
    disarm(timers, job.request_id);
    disarm(deadlines, job.request_id);
    if (job.status === 'IN_QUEUE') queued.add(job.seq, -1);
    else if (job.status === 'IN_PROGRESS') running -= 1;
  };

  const record = (job: JobRecord, charge: Charge, outcome: 'ok' | 'error', status: number, numImages: number) => {
    job.charge = charge;
    billing.push({
      request_id: job.request_id,
      gateway_request_id: job.gateway_request_id ?? job.request_id,
      endpoint: job.endpoint,
      outcome,
      status,
      units: charge.units,
      usd: charge.usd,
      unit: charge.unit,
      num_images: numImages,
      prompt_expansion_usd: charge.prompt_expansion_usd,
      completed_at: new Date(job.completed_at ?? Date.now()).toISOString(),
    });
  };

  const priceKey = (job: JobRecord) => {
    const spec = opts.endpoints.get(job.endpoint);
    if (!spec) throw new Error(`endpoint ${job.endpoint} is no longer served`);
    return spec.priceKey;
  };

  const fail = (job: JobRecord, f: JobFailure) => {
    job.outcome = 'error';
    job.error = { status: f.status, body: f.body, ...(f.hints ? { hints: f.hints } : {}) };
    const units = f.billable_units ?? (f.status < 500 && opts.billFailures ? undefined : '0');
    if (units === '0') return;
    try {
      record(job, priceFailure(opts.prices(), priceKey(job), units), 'error', f.status, 0);
    } catch (err) {
      opts.onError(err, job);
    }
  };

  const succeed = (job: JobRecord) => {
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
    try {
      const charge = priceJob(opts.prices(), priceKey(job), { images: job.images, promptExpansion: r.enable_prompt_expansion === true });
      job.outcome = 'ok';
      record(job, charge, 'ok', 200, n);
    } catch (err) {
      // A job the emulator cannot price must not look billed-at-zero.
      opts.onError(err, job);
      job.outcome = 'error';
      job.error = { status: 500, body: { detail: `Emulator cannot price this job: ${(err as Error).message}` } };
    }
  };

  const finish = (job: JobRecord) => {
    if (job.status === 'COMPLETED') return;
    release(job);
    job.started_at ??= Date.now();
    job.status = 'COMPLETED';
    job.completed_at = Date.now();
    if (job.fail) fail(job, job.fail);
    else succeed(job);
    emit(job, 'completed');
    pump();
  };

  const end = (job: JobRecord, outcome: 'cancelled' | 'error', error: NonNullable<JobRecord['error']>) => {
    release(job);
    job.status = 'COMPLETED';
    job.outcome = outcome;
    job.completed_at = Date.now();
    job.error = error;
    emit(job, 'completed');
    pump();
  };

  const expire = (job: JobRecord) => {
    if (job.status !== 'IN_QUEUE') return;
    end(job, 'error', { status: 504, body: { detail: 'Request timed out', error_type: 'request_timeout' }, hints: { timeoutType: 'user' } });
  };

  /** Arms the timers of a job that is not completed, from its saved state. */
  const schedule = (job: JobRecord) => {
    if (job.status === 'COMPLETED') return;
    if (job.status === 'IN_PROGRESS') {
      running += 1;
      if (job.fail?.at === 'start') arm(timers, job, Date.now(), () => finish(job));
      else if (!job.never_finish) arm(timers, job, job.done_at, () => finish(job));
      return;
    }
    queued.add(job.seq, 1);
    arm(timers, job, job.start_at, () => onReady(job));
    if (job.start_deadline !== undefined) arm(deadlines, job, job.start_deadline, () => expire(job));
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
    get running() {
      return running;
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
        run_ms: total - queueMs,
        done_at: now + total,
      };
      if (o.timeoutS !== undefined) job.start_deadline = now + Math.round(o.timeoutS * 1000);
      if (o.mediaTtlS !== undefined) job.media_ttl_s = o.mediaTtlS;
      if (o.storeIo === false) job.store_io = false;
      if (f.neverFinish) job.never_finish = true;
      if (f.nsfwIndexes) job.nsfw_indexes = f.nsfwIndexes;
      if (f.ignoreSyncMode) job.ignore_sync_mode = true;
      if (f.escapeSlashes) job.escape_slashes = true;
      if (f.runnerRetry) job.runner_retry = true;
      if (f.omitDimensions) job.omit_dimensions = true;
      if (f.webhookPayloadError) job.webhook_payload_error = true;
      if (f.fail) job.fail = f.fail;
      if (o.webhookUrl) job.webhook = { url: o.webhookUrl, state: 'pending', attempts: 0 };
      if (o.priority) job.priority = o.priority;
      jobs.set(job.request_id, job);
      schedule(job);
      emit(job, 'queued');
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
      if (job.status === 'IN_PROGRESS' && !opts.cancelStopsRunning) {
        job.cancel_requested_at ??= Date.now();
        return 'requested';
      }
      end(job, 'cancelled', { status: 400, body: { detail: 'Request was cancelled' }, hints: { errorType: 'client_cancelled' } });
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
        // Records saved before run_ms existed planned their whole life up front.
        job.run_ms ??= Math.max(0, job.done_at - job.start_at);
        jobs.set(job.request_id, job);
        seq = Math.max(seq, job.seq);
        schedule(job);
      }
    },
    clear() {
      for (const t of timers.values()) clearTimeout(t);
      for (const t of deadlines.values()) clearTimeout(t);
      timers.clear();
      deadlines.clear();
      queued.clear();
      ready = [];
      readyHead = 0;
      running = 0;
      const old = [...jobs.values()];
      jobs.clear();
      billing = [];
      for (const j of old) emit(j, 'removed');
    },
    close() {
      for (const t of timers.values()) clearTimeout(t);
      for (const t of deadlines.values()) clearTimeout(t);
      timers.clear();
      deadlines.clear();
    },
  };
}
