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
import { IMAGE_SIZE_PRESETS, promptHash, type ImageFormat, type RenderSpec } from './images.js';
import type { BillingEntry, CreateJobOptions, Engine, EngineOptions, JobEvent, JobFailure, JobRecord } from './job-types.js';
import { priceFailure, priceJob, type Charge } from './pricing.js';
import { QueueCounter } from './queue-counter.js';

export type * from './job-types.js';



export function imageDims(resolved: Record<string, unknown>): { width: number; height: number } {
  const size = resolved.image_size;
  if (typeof size === 'string') return IMAGE_SIZE_PRESETS[size] ?? { width: 1024, height: 768 };
  const o = (size ?? {}) as { width?: number; height?: number };
  return { width: o.width ?? 512, height: o.height ?? 512 };
}


export function createEngine(opts: EngineOptions): Engine {
  const jobs = new Map<string, JobRecord>();
  const timers = new Map<string, NodeJS.Timeout>();
  const deadlines = new Map<string, NodeJS.Timeout>();
  const queued = new QueueCounter();
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
    // fal's image_size "auto" on an edit: the input's size.
    const { width, height } = job.edit && r.image_size === 'auto' ? job.edit : imageDims(r);
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
      else if (job.edit) job.images.push({ kind: 'd', width, height, format, seed: job.seed, index: i, promptHash: hash, src: job.edit.image_url, ...(job.edit.mask_url === undefined ? {} : { mask: job.edit.mask_url }), strength: job.edit.strength });
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
