/** What `startEmulator` takes and what it returns (src/emulator/emulator.ts). */
import type { EmulatorLogger } from './context.js';
import type { EndpointSpec } from './endpoints.js';
import type { ArmedFault, FaultSpec } from './faults.js';
import type { ImageMode } from './images.js';
import type { BillingEntry, JobRecord } from './jobs.js';
import type { PriceTable } from './pricing.js';
import type { Kinder } from './behaviours.js';
import type { DeliveryAttempt, Jwk, WebhookRetryOptions } from './webhooks.js';

export interface EmulatorOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Total queue + inference time per job; default 50 ms (a quarter of it queued). */
  latencyMs?: number;
  /** "entropy" (default): per-image content with realistic sizes; "cheap": one cached image per size and format. */
  imageMode?: ImageMode;
  /** A price table object; wins over pricesFile. */
  prices?: PriceTable;
  /** Default: the emulator's own src/emulator/prices.json. */
  pricesFile?: string;
  /** Persist jobs, billing and the webhook key here (atomic, debounced writes) and reload them on start. */
  stateFile?: string;
  /** Debounce for state writes; default 100 ms. */
  stateDebounceMs?: number;
  /** When set, only `Authorization: Key <emulatorKey>` is accepted. */
  emulatorKey?: string;
  /** Base of image and file URLs; default the emulator's own URL. */
  publicUrl?: string;
  logger?: EmulatorLogger;
  /** Webhook retry policy; default 11 attempts, 1 s doubling, 15 s timeout. */
  webhookRetry?: Partial<WebhookRetryOptions>;
  /** The `X-Fal-Webhook-User-Id` sent with webhooks; default "emulator-user". */
  webhookUserId?: string;
  /** Endpoint table; default ENDPOINTS. */
  endpoints?: readonly EndpointSpec[];
  /** Bytes of rendered images kept in memory; default 256 MiB. */
  imageCacheBytes?: number;
  /** Bytes of uploaded files kept in memory; default 512 MiB. */
  storageBytes?: number;
  /** Completed jobs beyond this are forgotten, oldest first; default 100000. */
  maxJobs?: number;
  /** Largest image the emulator renders, in pixels; default 4194304 (2048×2048, DEFAULT_MAX_RENDER_PIXELS). */
  maxRenderPixels?: number;
  /** Interval of status-stream updates while a job waits; default 10 s. */
  streamHeartbeatMs?: number;
  /** Jobs running at once (fal's per-account concurrency limit); the rest wait IN_QUEUE. Default 10. */
  concurrency?: number;
  /** Seconds output media stays downloadable; default 3600. `null` (or kinder `media_never_expires`): forever. */
  mediaTtlS?: number | null;
  /** Hosts (host or host:port) whose URLs edit inputs are fetched from, besides the emulator's own CDN; default none. */
  inputHosts?: readonly string[];
  /** Real-fal behaviours to turn off, by name (see behaviours.ts); a test that needs one says so. */
  kinder?: readonly Kinder[];
}

export interface Emulator {
  /** `http://127.0.0.1:PORT`, no trailing slash. */
  readonly url: string;
  readonly port: number;
  readonly host: string;
  readonly publicUrl: string;
  /** Closes the server, every socket and every timer; flushes the state file. */
  close(): Promise<void>;
  /** Forgets jobs, billing, faults, uploads and webhook deliveries; restores the configured price table. */
  reset(): void;
  billing(): BillingEntry[];
  /** Sum of billing usd, decimal string. */
  billingTotal(): string;
  armFault(spec: FaultSpec | FaultSpec[]): ArmedFault[];
  faults(): ArmedFault[];
  clearFaults(): void;
  jobs(): Array<JobRecord & { queue_position: number }>;
  job(requestId: string): (JobRecord & { queue_position: number }) | undefined;
  /** Completes a job now (e.g. one held by never_finish). */
  finishJob(requestId: string): boolean;
  prices(): PriceTable;
  /** Replaces (or merges into) the price table; throws if a served endpoint would be left unpriced. */
  setPrices(table: PriceTable, opts?: { merge?: boolean }): void;
  webhookDeliveries(): DeliveryAttempt[];
  jwks(): { keys: Jwk[] };
  /** HTTP calls seen per phase (submit, status, stream, result, cancel, run, upload, files, platform, admin). */
  stats(): Record<string, number>;
  /** Waits for pending state-file writes. */
  flush(): Promise<void>;
}
