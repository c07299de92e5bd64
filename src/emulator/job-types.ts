/** The records and options of the job engine (jobs.ts). */
import type { EditInput } from './edit-inputs.js';
import type { EndpointSpec } from './endpoints.js';
import type { ErrorHints } from './errors.js';
import type { ImageFormat, ImageMode, RenderSpec } from './images.js';
import type { Charge, PriceTable } from './pricing.js';

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
  /** An image-to-image or inpaint job: its inputs, read when it was admitted (edit-inputs.ts). */
  edit?: EditInput;
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
