/**
 * The environment, parsed once. Every problem is collected and reported
 * together so an operator fixes a bad deployment in one pass, not one
 * restart per variable.
 *
 * Settings are grouped by room: each room is one interface in
 * src/config-types.ts and one `read…` function here that reads exactly its
 * fields. A rule joining settings of two rooms is in `checkAcrossRooms`.
 */
import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { normalizeHostPattern } from './images/outbound.js';
import type {
  AuthConfig,
  BillingConfig,
  Config,
  FalConfig,
  LimitsConfig,
  LoggingConfig,
  MediaConfig,
  ReconcileConfig,
  ServerConfig,
  StorageConfig,
} from './config-types.js';
import { DEFAULT_LEASE_EXPIRY_MS, DEFAULT_LEASE_RENEW_MS } from './metering/leases.js';
import { DEFAULT_GIVE_UP_AFTER_MS } from './metering/job-state.js';
import { createEnvReader, parseModelPrices, type Env, type EnvReader } from './config-env.js';

export type * from './config-types.js';

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

/**
 * The earliest a job may be given up: its request's deadline has passed on
 * whichever process took it, and that process's lease (were it dead) has
 * expired, so reconciliation is the only one still asking fal about it.
 */
export function giveUpFloorMs(config: Pick<Config, 'requestTimeoutMs' | 'leaseExpiryMs'>): number {
  return config.requestTimeoutMs + config.leaseExpiryMs;
}

/** How long a cached LoRA URL must still live to be used: fal reads it when the job starts, at most our request deadline after the submit. */
export function loraReuseMarginMs(config: Pick<Config, 'requestTimeoutMs'>): number {
  return config.requestTimeoutMs + 60_000;
}

export function loadConfig(env: Env = process.env): Config {
  const r = createEnvReader(env);
  const limits = readLimits(r);
  const config: Config = {
    ...readServer(r),
    ...readAuth(r),
    ...readLogging(r),
    ...readFal(r),
    ...readStorage(r),
    ...readBilling(r),
    ...readMedia(r),
    ...limits,
    ...readReconcile(r, limits),
  };
  checkAcrossRooms(config, r.problems);
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return config;
}

function readServer(r: EnvReader): ServerConfig {
  const server: ServerConfig = {
    port: r.int('PORT', 8080, 0, 65535),
    host: r.str('HOST') ?? '127.0.0.1',
    publicBaseUrl: r.url('PUBLIC_BASE_URL', ['http:', 'https:']),
    maxBodyBytes: r.int('MAX_BODY_BYTES', 1_048_576, 1_024, 104_857_600),
    streamKeepAliveMs: r.int('STREAM_KEEPALIVE_MS', 15_000, 10, 60_000),
    corsOrigins: (r.str('CORS_ORIGINS') ?? '').split(',').map((o) => o.trim()).filter(Boolean),
    strictParams: r.bool('STRICT_PARAMS', false),
    headersTimeoutMs: r.int('HEADERS_TIMEOUT_MS', 10_000, 100, 600_000),
    bodyTimeoutMs: r.int('BODY_TIMEOUT_MS', 30_000, 100, 3_600_000),
    keepAliveTimeoutMs: r.int('KEEP_ALIVE_TIMEOUT_MS', 65_000, 1_000, 3_600_000),
    heapOptimizeForSize: heapMode(r),
    heapOptimizeForSizeFrom: r.int('HEAP_OPTIMIZE_FOR_SIZE_FROM', 1_000, 1, 10_000_000),
  };
  if (server.bodyTimeoutMs < server.headersTimeoutMs) {
    r.problems.push(`BODY_TIMEOUT_MS (${server.bodyTimeoutMs}) must be at least HEADERS_TIMEOUT_MS (${server.headersTimeoutMs}): the whole request includes its headers`);
  }
  return server;
}

/** `auto` (the default), or a boolean word for always / never. */
function heapMode(r: EnvReader): boolean | 'auto' {
  return (r.str('HEAP_OPTIMIZE_FOR_SIZE') ?? 'auto').toLowerCase() === 'auto' ? 'auto' : r.bool('HEAP_OPTIMIZE_FOR_SIZE', true);
}

function readAuth(r: EnvReader): AuthConfig {
  const apiKeys = (r.str('API_KEYS') ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  for (const k of apiKeys) {
    if (k.length < 16) r.problems.push('API_KEYS entries must be at least 16 characters (short keys are guessable)');
  }
  const adminApiKey = r.str('ADMIN_API_KEY');
  if (adminApiKey !== undefined && adminApiKey.length < 16) r.problems.push('ADMIN_API_KEY must be at least 16 characters');
  return { apiKeys, adminApiKey };
}

function readLogging(r: EnvReader): LoggingConfig {
  return {
    logLevel: r.oneOf('LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
    logFormat: r.oneOf('LOG_FORMAT', ['auto', 'json', 'pretty'], 'auto'),
    logPrompts: r.bool('LOG_PROMPTS', false),
  };
}

function readFal(r: EnvReader): FalConfig {
  const falKey = r.str('FAL_KEY');
  const falBaseUrl = r.url('FAL_BASE_URL', ['http:', 'https:']);
  const imageMode = r.str('EMULATOR_IMAGE_MODE');
  if (imageMode !== undefined && imageMode !== 'entropy' && imageMode !== 'cheap') {
    r.problems.push(`EMULATOR_IMAGE_MODE must be entropy or cheap (got ${JSON.stringify(imageMode)})`);
  }
  return {
    falKey,
    falBaseUrl,
    embeddedEmulator: falKey === undefined && falBaseUrl === undefined,
    falStoreIo: r.bool('FAL_STORE_IO', true),
    falWebhooks: r.bool('FAL_WEBHOOKS', false),
    falJwksUrl: r.url('FAL_JWKS_URL', ['http:', 'https:']) ?? 'https://rest.alpha.fal.ai/.well-known/jwks.json',
    falWebhookGraceMs: r.int('FAL_WEBHOOK_GRACE_MS', 30_000, 0, 3_600_000),
    statusStreamsMax: r.int('STATUS_STREAMS_MAX', 256, 0, 100_000),
    statusPollRps: r.int('STATUS_POLL_RPS', 200, 0, 1_000_000),
    falMaxConnections: r.int('FAL_MAX_CONNECTIONS', 128, 1, 10_000),
    emulatorLatencyMs: r.str('EMULATOR_LATENCY_MS') === undefined ? undefined : r.int('EMULATOR_LATENCY_MS', 0, 0, 3_600_000),
    emulatorImageMode: imageMode as FalConfig['emulatorImageMode'],
  };
}

function readStorage(r: EnvReader): StorageConfig {
  const sqliteSync = (r.str('SQLITE_SYNCHRONOUS') ?? 'normal').toLowerCase();
  if (sqliteSync !== 'normal' && sqliteSync !== 'full') r.problems.push(`SQLITE_SYNCHRONOUS must be normal or full (got ${JSON.stringify(sqliteSync)})`);
  return {
    dataDir: r.str('DATA_DIR') ?? './data',
    // Its password must not reach stderr when the value is malformed.
    databaseUrl: r.secretUrl('DATABASE_URL', ['postgres:', 'postgresql:']),
    sqliteSynchronous: sqliteSync === 'full' ? 'full' : 'normal',
    // A request holds a connection only for one short statement at a time,
    // never across a network call: a few connections serve thousands of
    // statements a second. More of them only add server processes competing
    // for the database's cores (docs/LEDGER-COST.md, "Connections"), and ten
    // replicas must fit PostgreSQL's default max_connections (100).
    databasePoolSize: r.int('DATABASE_POOL_SIZE', 5, 1, 1000),
    databaseAcquireTimeoutMs: r.int('DATABASE_ACQUIRE_TIMEOUT_MS', 30_000, 100, 600_000),
    idempotencyTtlS: r.int('IDEMPOTENCY_TTL_S', 86_400, 1, 30 * 86_400),
  };
}

function readBilling(r: EnvReader): BillingConfig {
  const markup = r.str('PRICE_MARKUP') ?? '1.0';
  if (!/^\d+(\.\d+)?$/.test(markup) || Number(markup) <= 0) {
    r.problems.push(`PRICE_MARKUP must be a positive decimal such as 1.05 (got ${JSON.stringify(markup)})`);
  }
  const billingWebhookUrl = r.url('BILLING_WEBHOOK_URL', ['http:', 'https:']);
  const billingWebhookSecret = r.str('BILLING_WEBHOOK_SECRET');
  if (billingWebhookUrl && !billingWebhookSecret) r.problems.push('BILLING_WEBHOOK_URL needs BILLING_WEBHOOK_SECRET to sign events');
  const whsec = billingWebhookSecret?.startsWith('whsec_') ? billingWebhookSecret.slice(6) : undefined;
  if (whsec !== undefined && !(/^[A-Za-z0-9+/]+={0,2}$/.test(whsec) && whsec.length % 4 === 0)) {
    // Never echo the value: it is a secret.
    r.problems.push('BILLING_WEBHOOK_SECRET starts with whsec_ but what follows is not standard base64');
  }
  return {
    priceMarkup: markup,
    modelPrices: parseModelPrices(r.str('MODEL_PRICES'), r.problems),
    billingWebhookUrl,
    billingWebhookSecret,
    billingWebhookMaxBackoffMs: r.int('BILLING_WEBHOOK_MAX_BACKOFF_MS', 3_600_000, 10, 7 * 86_400_000),
  };
}

function readMedia(r: EnvReader): MediaConfig {
  const fileUrlSecret = r.str('FILE_URL_SECRET');
  if (fileUrlSecret !== undefined && fileUrlSecret.length < 32) r.problems.push('FILE_URL_SECRET must be at least 32 characters: it signs every image URL served from this origin');
  return {
    fileUrlSecret,
    fileUrlTtlS: r.int('FILE_URL_TTL_S', 86_400, 60, 30 * 86_400),
    imageHostsAllowed: readHostList(r, 'IMAGE_HOSTS_ALLOWED'),
    imageMaxBytes: r.int('IMAGE_MAX_BYTES', 64 * 1024 * 1024, 1024, 2 ** 31 - 1),
    imageFetchTimeoutMs: r.int('IMAGE_FETCH_TIMEOUT_MS', 30_000, 100, 600_000),
    editImageMaxBytes: r.int('EDIT_IMAGE_MAX_BYTES', 25 * 1024 * 1024, 1024, 2 ** 31 - 1),
    editImageHostsAllowed: readHostList(r, 'EDIT_IMAGE_HOSTS_ALLOWED') ?? [],
    loraDir: readLoraDir(r),
    loraMaxBytes: r.int('LORA_MAX_BYTES', 2 * 1024 ** 3, 1, Number.MAX_SAFE_INTEGER),
    loraUploadTtlS: r.int('LORA_UPLOAD_TTL_S', 7 * 86_400, 60, 365 * 86_400),
  };
}

/** A comma-separated host list (hostnames, `*.suffix` wildcards, IP literals), normalized; undefined when unset. */
function readHostList(r: EnvReader, name: string): string[] | undefined {
  const raw = r.str(name);
  if (raw === undefined) return undefined;
  const hosts: string[] = [];
  for (const entry of raw.split(',').map((h) => h.trim()).filter(Boolean)) {
    const host = normalizeHostPattern(entry);
    if (host === null) r.problems.push(`${name} entries must be hostnames, *.suffix wildcards or IP addresses, without scheme or port (got ${JSON.stringify(entry)})`);
    else hosts.push(host);
  }
  return hosts;
}

function readLoraDir(r: EnvReader): string | undefined {
  const raw = r.str('LORA_DIR');
  if (raw === undefined) return undefined;
  const loraDir = isAbsolute(raw) ? raw : resolve(raw);
  let isDir = false;
  try {
    isDir = statSync(loraDir).isDirectory();
  } catch {
    // reported below
  }
  if (!isDir) r.problems.push(`LORA_DIR must be an existing directory (got ${JSON.stringify(loraDir)})`);
  return loraDir;
}

function readLimits(r: EnvReader): LimitsConfig {
  const maxInFlight = r.int('MAX_IN_FLIGHT', 2_000, 1, 1_000_000);
  // Room above MAX_IN_FLIGHT for the connections that are not image requests in
  // progress: idle keep-alive, health checks, scrapes, and requests being refused.
  const maxConnections = r.int('MAX_CONNECTIONS', Math.max(2 * maxInFlight, maxInFlight + 100), 1, 10_000_000);
  if (maxConnections <= maxInFlight) {
    r.problems.push(`MAX_CONNECTIONS (${maxConnections}) must be greater than MAX_IN_FLIGHT (${maxInFlight}): at the connection cap a request is reset instead of answered 429`);
  }
  return {
    requestTimeoutMs: r.int('REQUEST_TIMEOUT_MS', 300_000, 1_000, 3_600_000),
    maxInFlight,
    maxConnections,
    defaultRpmLimit: r.int('DEFAULT_RPM_LIMIT', 600, 0, 1_000_000),
    redisUrl: r.secretUrl('REDIS_URL', ['redis:', 'rediss:']),
    redisKeyPrefix: r.str('REDIS_KEY_PREFIX') ?? 'images-gw:rl',
    rateLimitFailClosed: r.bool('RATE_LIMIT_FAIL_CLOSED', false),
    shutdownGraceMs: r.int('SHUTDOWN_GRACE_MS', 30_000, 0, 3_600_000),
    shutdownMinDrainMs: r.int('SHUTDOWN_MIN_DRAIN_MS', 5_000, 0, 600_000),
  };
}

function readReconcile(r: EnvReader, limits: Pick<Config, 'requestTimeoutMs'>): ReconcileConfig {
  const leaseRenewMs = r.int('LEASE_RENEW_MS', DEFAULT_LEASE_RENEW_MS, 100, 60_000);
  const leaseExpiryMs = r.int('LEASE_EXPIRY_MS', DEFAULT_LEASE_EXPIRY_MS, 1_000, 600_000);
  if (leaseRenewMs * 2 > leaseExpiryMs) {
    r.problems.push(`LEASE_RENEW_MS (${leaseRenewMs}) must be at most half of LEASE_EXPIRY_MS (${leaseExpiryMs}): one late renewal must not let a live process's lease expire`);
  }
  const floorMs = giveUpFloorMs({ requestTimeoutMs: limits.requestTimeoutMs, leaseExpiryMs });
  const jobGiveUpMs = r.int('JOB_GIVE_UP_MS', Math.max(DEFAULT_GIVE_UP_AFTER_MS, floorMs + 60_000), 1_000, 7 * 86_400_000);
  if (jobGiveUpMs <= floorMs) r.problems.push(`JOB_GIVE_UP_MS (${jobGiveUpMs}) must be more than REQUEST_TIMEOUT_MS + LEASE_EXPIRY_MS (${floorMs}): a job is given up only once no live process can still be waiting on it`);
  return {
    // By default a request is only reconciled once no live process could still
    // be working on it: our own deadline plus a margin.
    reconcileAfterMs: r.int('RECONCILE_AFTER_MS', limits.requestTimeoutMs + 60_000, 0, 7 * 86_400_000),
    reconcileIntervalMs: r.int('RECONCILE_INTERVAL_MS', 60_000, 0, 86_400_000),
    leaseRenewMs,
    leaseExpiryMs,
    jobGiveUpMs,
  };
}

/** Rules that join settings of different rooms. */
function checkAcrossRooms(config: Config, problems: string[]): void {
  if (config.loraUploadTtlS * 1000 <= loraReuseMarginMs(config)) {
    problems.push(`LORA_UPLOAD_TTL_S must be longer than REQUEST_TIMEOUT_MS + 60 s (${loraReuseMarginMs(config) / 1000} s): an uploaded LoRA must outlive the job that reads it`);
  }
  if (config.databaseUrl && !config.fileUrlSecret && (config.falBaseUrl || config.embeddedEmulator)) {
    problems.push('DATABASE_URL with images served from this origin (FAL_BASE_URL or the bundled emulator) needs FILE_URL_SECRET: every replica must verify the image URLs another one signed');
  }
  if (config.falWebhooks && !config.publicBaseUrl) problems.push('FAL_WEBHOOKS needs PUBLIC_BASE_URL: the address fal posts job callbacks to');
}
