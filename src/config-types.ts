/**
 * The settings `loadConfig` (src/config.ts) returns, one interface per room;
 * `Config` is all of them. Each field's comment names what it bounds or
 * decides; its variable, default and range are in src/config.ts.
 */
import type { ModelPrices } from './models/prices.js';

/** The HTTP server: where it listens and what it accepts from clients. */
export interface ServerConfig {
  port: number;
  host: string;
  publicBaseUrl: string | undefined;
  maxBodyBytes: number;
  /** Interval of keep-alive comments on streamed (`stream: true`) answers. */
  streamKeepAliveMs: number;
  /** Origins allowed by CORS; empty = CORS off. */
  corsOrigins: string[];
  /** STRICT_PARAMS: OpenAI hints a model does not act on are refused (400) instead of ignored and declared. */
  strictParams: boolean;
  /** Longest a client may take to send a request's headers (and a fresh connection its first request). */
  headersTimeoutMs: number;
  /** Longest a client may take to send a whole request, body included; answers are not limited by it. */
  bodyTimeoutMs: number;
  /**
   * How long an idle kept-alive connection stays open. Longer than the idle
   * expiry of the clients and load balancers in front of us (httpx, under
   * the openai Python SDK, 5 s; undici 4 s; an AWS ALB 60 s), so the client
   * side always closes first: a server that closes first races the client's
   * next request on that socket, which then fails with ECONNRESET.
   */
  keepAliveTimeoutMs: number;
  /**
   * HEAP_OPTIMIZE_FOR_SIZE: V8's memory-saving heap mode (src/optimize-for-size.ts), less memory per
   * waiting job for more CPU per submit: always, never, or `auto`, from `heapOptimizeForSizeFrom` requests in progress.
   */
  heapOptimizeForSize: boolean | 'auto';
  /** HEAP_OPTIMIZE_FOR_SIZE_FROM: requests in progress from which `auto` turns the mode on (off again below half). */
  heapOptimizeForSizeFrom: number;
}

/** Who may call. */
export interface AuthConfig {
  /** Static bearer keys (`API_KEYS`). */
  apiKeys: string[];
  adminApiKey: string | undefined;
}

export interface LoggingConfig {
  logLevel: string;
  /** LOG_FORMAT: `auto` (for people on a terminal, JSON otherwise), `json` or `pretty`. */
  logFormat: 'auto' | 'json' | 'pretty';
  logPrompts: boolean;
}

/** The upstream: real fal, a fal-protocol server, or the emulator run in-process. */
export interface FalConfig {
  falKey: string | undefined;
  /** Host-prefixed fal-protocol server; unset with FAL_KEY means real fal. */
  falBaseUrl: string | undefined;
  /** True when neither FAL_KEY nor FAL_BASE_URL is set: run the emulator in-process. */
  embeddedEmulator: boolean;
  /** `FAL_STORE_IO=0`: submits say `X-Fal-Store-IO: 0`, keeping inputs and outputs out of fal's request history. */
  falStoreIo: boolean;
  /** Submit jobs with fal's webhook (needs PUBLIC_BASE_URL reachable by fal). */
  falWebhooks: boolean;
  falJwksUrl: string;
  /** How late a callback may be before the job is polled instead. */
  falWebhookGraceMs: number;
  /** Status streams open at once (each holds a connection); beyond, jobs poll. */
  statusStreamsMax: number;
  /** Status polls per second across all jobs; 0 = no cap. */
  statusPollRps: number;
  /** Connections to fal for short calls (submit, status, result, cancel). */
  falMaxConnections: number;
  emulatorLatencyMs: number | undefined;
  emulatorImageMode: 'entropy' | 'cheap' | undefined;
}

/** The database and what is kept in it besides the ledger. */
export interface StorageConfig {
  dataDir: string;
  databaseUrl: string | undefined;
  /** SQLite commit durability: `normal` (WAL; survives a process crash) or `full` (also power loss, an fsync per commit). */
  sqliteSynchronous: 'normal' | 'full';
  /** PostgreSQL connections per process. */
  databasePoolSize: number;
  /** How long a query may wait for a free connection before metering counts as unavailable (503). */
  databaseAcquireTimeoutMs: number;
  idempotencyTtlS: number;
}

/** What a request costs the caller, and where billing events are sent. */
export interface BillingConfig {
  /** Exact decimal string, e.g. "1.05". */
  priceMarkup: string;
  /** `MODEL_PRICES`: prices by model id or alias, for models without a confirmed one or to replace a published one. */
  modelPrices: ModelPrices;
  billingWebhookUrl: string | undefined;
  billingWebhookSecret: string | undefined;
  /** The longest wait between two delivery attempts of one billing event. */
  billingWebhookMaxBackoffMs: number;
}

/** Image bytes in and out: downloads, our own image URLs, local LoRA files. */
export interface MediaConfig {
  /** Signs the `/v1/files/...` image URLs; unset on a single process, one is kept under DATA_DIR. */
  fileUrlSecret: string | undefined;
  /** How long an image URL served from our origin stays readable. */
  fileUrlTtlS: number;
  /** Hosts image bytes may be downloaded from (normalized); undefined = fal's media hosts plus the fal base origin. */
  imageHostsAllowed: string[] | undefined;
  /** Largest image downloaded for b64_json. */
  imageMaxBytes: number;
  /** Longest one image download may take. */
  imageFetchTimeoutMs: number;
  /** Largest image (or mask) file an edit may upload (EDIT_IMAGE_MAX_BYTES). */
  editImageMaxBytes: number;
  /** Hosts whose image URLs an edit may name without the public-address check (EDIT_IMAGE_HOSTS_ALLOWED), normalized. */
  editImageHostsAllowed: string[];
  /** Absolute directory local LoRA files may be read from; unset = local paths refused. */
  loraDir: string | undefined;
  /** Largest local LoRA file we will upload to fal (LORA_MAX_BYTES). */
  loraMaxBytes: number;
  /** Seconds fal keeps an uploaded LoRA file (LORA_UPLOAD_TTL_S); a cached URL is re-uploaded before then. */
  loraUploadTtlS: number;
}

/** Serving limits, drain and limiter policy (docs/OPERATIONS.md). */
export interface LimitsConfig {
  requestTimeoutMs: number;
  /** Image requests one process works on at once; beyond it, 429. */
  maxInFlight: number;
  /** Connections one process holds at once; above `maxInFlight`, so a request past that cap is answered 429, not reset. */
  maxConnections: number;
  /** Requests per minute for keys without their own `rpm_limit`; 0 = unlimited. */
  defaultRpmLimit: number;
  /** Shared rate-limit counters; unset = counted in each process. */
  redisUrl: string | undefined;
  redisKeyPrefix: string;
  /** `RATE_LIMIT_FAIL_CLOSED`: when the limiter's store fails, answer 503 instead of serving uncounted. */
  rateLimitFailClosed: boolean;
  /** On SIGTERM: how long in-flight requests may take to finish. */
  shutdownGraceMs: number;
  /** On SIGTERM: how long the process keeps listening (answering 503) before it closes, whatever is in flight. */
  shutdownMinDrainMs: number;
}

/** Settling what a request left open: leases and reconciliation with fal. */
export interface ReconcileConfig {
  /** Open requests older than this are reconciled with fal (start-up and periodically). */
  reconcileAfterMs: number;
  /** How often to look for open requests; 0 = only at start-up. */
  reconcileIntervalMs: number;
  /** How often this process renews its lease (src/metering/leases.ts). */
  leaseRenewMs: number;
  /** How long after its last renewal a lease expires: a dead process's requests are settled after this. */
  leaseExpiryMs: number;
  /**
   * How old a job fal never resolved (still running after a cancel, or its
   * status and result failing) may get before reconciliation gives it up as
   * `lost` and releases its request's hold (JOB_GIVE_UP_MS).
   */
  jobGiveUpMs: number;
}

export interface Config
  extends ServerConfig,
    AuthConfig,
    LoggingConfig,
    FalConfig,
    StorageConfig,
    BillingConfig,
    MediaConfig,
    LimitsConfig,
    ReconcileConfig {}
