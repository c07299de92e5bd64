/**
 * The environment, parsed once. Every problem is collected and reported
 * together so an operator fixes a bad deployment in one pass, not one
 * restart per variable.
 */
import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { normalizeHostPattern } from './images/outbound.js';
import type { ModelPriceOverride, ModelPrices } from './models/prices.js';
import { PRICE_ROUNDINGS, PRICE_UNITS } from './metering/pricing.js';
import { DEFAULT_LEASE_EXPIRY_MS, DEFAULT_LEASE_RENEW_MS } from './metering/leases.js';
import { DEFAULT_GIVE_UP_AFTER_MS } from './metering/job-state.js';

export interface Config {
  port: number;
  host: string;
  /** Static bearer keys (`API_KEYS`). */
  apiKeys: string[];
  adminApiKey: string | undefined;
  falKey: string | undefined;
  /** Host-prefixed fal-protocol server; unset with FAL_KEY means real fal. */
  falBaseUrl: string | undefined;
  /** True when neither FAL_KEY nor FAL_BASE_URL is set: run the emulator in-process. */
  embeddedEmulator: boolean;
  publicBaseUrl: string | undefined;
  requestTimeoutMs: number;
  /** Interval of keep-alive comments on streamed (`stream: true`) answers. */
  streamKeepAliveMs: number;
  maxBodyBytes: number;
  /** Exact decimal string, e.g. "1.05". */
  priceMarkup: string;
  logLevel: string;
  /** LOG_FORMAT: `auto` (for people on a terminal, JSON otherwise), `json` or `pretty`. */
  logFormat: 'auto' | 'json' | 'pretty';
  logPrompts: boolean;
  /** STRICT_PARAMS: OpenAI hints a model does not act on are refused (400) instead of ignored and declared. */
  strictParams: boolean;
  dataDir: string;
  databaseUrl: string | undefined;
  idempotencyTtlS: number;
  billingWebhookUrl: string | undefined;
  billingWebhookSecret: string | undefined;
  /** Signs the `/v1/files/...` image URLs; unset on a single process, one is kept under DATA_DIR. */
  fileUrlSecret: string | undefined;
  /** How long an image URL served from our origin stays readable. */
  fileUrlTtlS: number;
  /** The longest wait between two delivery attempts of one billing event. */
  billingWebhookMaxBackoffMs: number;
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
  /** Image requests one process works on at once; beyond it, 429. */
  maxInFlight: number;
  /** On SIGTERM: how long in-flight requests may take to finish. */
  shutdownGraceMs: number;
  /** Origins allowed by CORS; empty = CORS off. */
  corsOrigins: string[];
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
  /** SQLite commit durability: `normal` (WAL; survives a process crash) or `full` (also power loss, an fsync per commit). */
  sqliteSynchronous: 'normal' | 'full';
  /** PostgreSQL connections per process. */
  databasePoolSize: number;
  /** How long a query may wait for a free connection before metering counts as unavailable (503). */
  databaseAcquireTimeoutMs: number;
  emulatorLatencyMs: number | undefined;
  emulatorImageMode: 'entropy' | 'cheap' | undefined;
  /** Requests per minute for keys without their own `rpm_limit`; 0 = unlimited. */
  defaultRpmLimit: number;
  /** Shared rate-limit counters; unset = counted in each process. */
  redisUrl: string | undefined;
  redisKeyPrefix: string;
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
  /** `MODEL_PRICES`: prices by model id or alias, for models without a confirmed one or to replace a published one. */
  modelPrices: ModelPrices;
  // Serving limits, drain and limiter policy (docs/OPERATIONS.md).
  /** On SIGTERM: how long the process keeps listening (answering 503) before it closes, whatever is in flight. */
  shutdownMinDrainMs: number;
  /** Longest a client may take to send a request's headers (and a fresh connection its first request). */
  headersTimeoutMs: number;
  /** Longest a client may take to send a whole request, body included; answers are not limited by it. */
  bodyTimeoutMs: number;
  /** Connections one process holds at once; above `maxInFlight`, so a request past that cap is answered 429, not reset. */
  maxConnections: number;
  /** `RATE_LIMIT_FAIL_CLOSED`: when the limiter's store fails, answer 503 instead of serving uncounted. */
  rateLimitFailClosed: boolean;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

const DECIMAL = /^\d+(\.\d+)?$/;
const MODEL_PRICES_SHAPE =
  'MODEL_PRICES must be a JSON object {"<model id>": "<USD per unit>"} or {"<model id>": {"rateUsd", "unit", "megapixelPixels", "rounding", "promptExpansionUsd"}}';

/**
 * The shape and the decimals of `MODEL_PRICES`; whether each name is a model
 * and each price rule complete is decided where the catalog is known
 * (src/models/prices.ts), still before the service listens.
 */
function parseModelPrices(raw: string | undefined, problems: string[]): ModelPrices {
  if (raw === undefined) return {};
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    problems.push(`${MODEL_PRICES_SHAPE} (it is not valid JSON)`);
    return {};
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    problems.push(MODEL_PRICES_SHAPE);
    return {};
  }
  const entries: Array<[string, ModelPriceOverride]> = [];
  for (const [model, value] of Object.entries(json as Record<string, unknown>)) {
    const where = `MODEL_PRICES[${JSON.stringify(model)}]`;
    if (typeof value !== 'string' && (typeof value !== 'object' || value === null || Array.isArray(value))) {
      problems.push(`${where} must be a decimal string such as "0.01" or an object`);
      continue;
    }
    const rule: Record<string, unknown> = typeof value === 'string' ? { rateUsd: value } : (value as Record<string, unknown>);
    const unknown = Object.keys(rule).filter((k) => !['rateUsd', 'unit', 'megapixelPixels', 'rounding', 'promptExpansionUsd'].includes(k));
    if (unknown.length > 0) problems.push(`${where} has unknown fields: ${unknown.join(', ')}`);
    for (const k of ['rateUsd', 'promptExpansionUsd']) {
      // Decimal strings, never JSON numbers: 0.1 + 0.2 must not reach a bill.
      if (rule[k] !== undefined && (typeof rule[k] !== 'string' || !DECIMAL.test(rule[k] as string))) {
        problems.push(`${where}.${k} must be a decimal string such as "0.01" (got ${JSON.stringify(rule[k])})`);
      }
    }
    if (rule['unit'] !== undefined && !(PRICE_UNITS as readonly unknown[]).includes(rule['unit'])) problems.push(`${where}.unit must be one of ${PRICE_UNITS.join(', ')}`);
    if (rule['rounding'] !== undefined && !(PRICE_ROUNDINGS as readonly unknown[]).includes(rule['rounding'])) problems.push(`${where}.rounding must be one of ${PRICE_ROUNDINGS.join(', ')}`);
    const px = rule['megapixelPixels'];
    if (px !== undefined && !(typeof px === 'number' && Number.isSafeInteger(px) && px > 0)) problems.push(`${where}.megapixelPixels must be a positive integer`);
    entries.push([model, Object.freeze({ ...rule }) as ModelPriceOverride]);
  }
  // fromEntries defines own properties, so a "__proto__" key stays a (refused, unknown) model name rather than a prototype.
  return Object.freeze(Object.fromEntries(entries));
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
  const problems: string[] = [];
  const str = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const int = (name: string, def: number, min: number, max: number): number => {
    const raw = str(name);
    if (raw === undefined) return def;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      problems.push(`${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(raw)})`);
      return def;
    }
    return Number(raw);
  };
  const url = (name: string, protocols: string[]): string | undefined => {
    const raw = str(name);
    if (raw === undefined) return undefined;
    try {
      const u = new URL(raw);
      if (!protocols.includes(u.protocol)) throw new Error('protocol');
      return raw.replace(/\/+$/, '');
    } catch {
      problems.push(`${name} must be a ${protocols.join(' or ')} URL (got ${JSON.stringify(raw)})`);
      return undefined;
    }
  };
  // As `url`, for URLs that may carry a password: a bad value is never echoed.
  const secretUrl = (name: string, protocols: string[]): string | undefined => {
    const raw = str(name);
    if (raw === undefined) return undefined;
    if (URL.canParse(raw) && protocols.includes(new URL(raw).protocol)) return raw;
    problems.push(`${name} must be a ${protocols.join(' or ')} URL (value not shown: it may hold a password)`);
    return undefined;
  };
  const bool = (name: string, def: boolean): boolean => {
    const raw = str(name)?.toLowerCase();
    if (raw === undefined) return def;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    if (['0', 'false', 'no', 'off'].includes(raw)) return false;
    problems.push(`${name} must be true or false (got ${JSON.stringify(raw)})`);
    return def;
  };

  const markup = str('PRICE_MARKUP') ?? '1.0';
  if (!/^\d+(\.\d+)?$/.test(markup) || Number(markup) <= 0) {
    problems.push(`PRICE_MARKUP must be a positive decimal such as 1.05 (got ${JSON.stringify(markup)})`);
  }

  const apiKeys = (str('API_KEYS') ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  for (const k of apiKeys) {
    if (k.length < 16) problems.push('API_KEYS entries must be at least 16 characters (short keys are guessable)');
  }
  const adminApiKey = str('ADMIN_API_KEY');
  if (adminApiKey !== undefined && adminApiKey.length < 16) problems.push('ADMIN_API_KEY must be at least 16 characters');

  const falKey = str('FAL_KEY');
  const falBaseUrl = url('FAL_BASE_URL', ['http:', 'https:']);
  // Its password must not reach stderr when the value is malformed.
  const databaseUrl = secretUrl('DATABASE_URL', ['postgres:', 'postgresql:']);
  const logLevel = str('LOG_LEVEL') ?? 'info';
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    problems.push(`LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent (got ${JSON.stringify(logLevel)})`);
  }
  const logFormat = str('LOG_FORMAT') ?? 'auto';
  if (!['auto', 'json', 'pretty'].includes(logFormat)) problems.push(`LOG_FORMAT must be one of auto, json, pretty (got ${JSON.stringify(logFormat)})`);
  const billingWebhookUrl = url('BILLING_WEBHOOK_URL', ['http:', 'https:']);
  const billingWebhookSecret = str('BILLING_WEBHOOK_SECRET');
  if (billingWebhookUrl && !billingWebhookSecret) problems.push('BILLING_WEBHOOK_URL needs BILLING_WEBHOOK_SECRET to sign events');
  const fileUrlSecret = str('FILE_URL_SECRET');
  if (fileUrlSecret !== undefined && fileUrlSecret.length < 32) problems.push('FILE_URL_SECRET must be at least 32 characters: it signs every image URL served from this origin');
  const whsec = billingWebhookSecret?.startsWith('whsec_') ? billingWebhookSecret.slice(6) : undefined;
  if (whsec !== undefined && !(/^[A-Za-z0-9+/]+={0,2}$/.test(whsec) && whsec.length % 4 === 0)) {
    // Never echo the value: it is a secret.
    problems.push('BILLING_WEBHOOK_SECRET starts with whsec_ but what follows is not standard base64');
  }

  const sqliteSync = (str('SQLITE_SYNCHRONOUS') ?? 'normal').toLowerCase();
  if (sqliteSync !== 'normal' && sqliteSync !== 'full') problems.push(`SQLITE_SYNCHRONOUS must be normal or full (got ${JSON.stringify(sqliteSync)})`);
  const imageMode = str('EMULATOR_IMAGE_MODE');
  if (imageMode !== undefined && imageMode !== 'entropy' && imageMode !== 'cheap') {
    problems.push(`EMULATOR_IMAGE_MODE must be entropy or cheap (got ${JSON.stringify(imageMode)})`);
  }

  const imageHostsAllowed = hostList('IMAGE_HOSTS_ALLOWED', str('IMAGE_HOSTS_ALLOWED'), problems);

  let loraDir = str('LORA_DIR');
  if (loraDir !== undefined) {
    loraDir = isAbsolute(loraDir) ? loraDir : resolve(loraDir);
    let isDir = false;
    try {
      isDir = statSync(loraDir).isDirectory();
    } catch {
      // reported below
    }
    if (!isDir) problems.push(`LORA_DIR must be an existing directory (got ${JSON.stringify(loraDir)})`);
  }

  const config: Config = {
    port: int('PORT', 8080, 0, 65535),
    host: str('HOST') ?? '127.0.0.1',
    apiKeys,
    adminApiKey,
    falKey,
    falBaseUrl,
    embeddedEmulator: falKey === undefined && falBaseUrl === undefined,
    publicBaseUrl: url('PUBLIC_BASE_URL', ['http:', 'https:']),
    requestTimeoutMs: int('REQUEST_TIMEOUT_MS', 300_000, 1_000, 3_600_000),
    streamKeepAliveMs: int('STREAM_KEEPALIVE_MS', 15_000, 10, 60_000),
    maxBodyBytes: int('MAX_BODY_BYTES', 1_048_576, 1_024, 104_857_600),
    priceMarkup: markup,
    logLevel,
    logFormat: logFormat as Config['logFormat'],
    logPrompts: bool('LOG_PROMPTS', false),
    strictParams: bool('STRICT_PARAMS', false),
    dataDir: str('DATA_DIR') ?? './data',
    databaseUrl,
    idempotencyTtlS: int('IDEMPOTENCY_TTL_S', 86_400, 1, 30 * 86_400),
    billingWebhookUrl,
    billingWebhookSecret,
    fileUrlSecret,
    fileUrlTtlS: int('FILE_URL_TTL_S', 86_400, 60, 30 * 86_400),
    billingWebhookMaxBackoffMs: int('BILLING_WEBHOOK_MAX_BACKOFF_MS', 3_600_000, 10, 7 * 86_400_000),
    reconcileAfterMs: 0,
    databasePoolSize: int('DATABASE_POOL_SIZE', 20, 1, 1000),
    databaseAcquireTimeoutMs: int('DATABASE_ACQUIRE_TIMEOUT_MS', 30_000, 100, 600_000),
    sqliteSynchronous: sqliteSync === 'full' ? 'full' : 'normal',
    falWebhooks: bool('FAL_WEBHOOKS', false),
    falStoreIo: bool('FAL_STORE_IO', true),
    falJwksUrl: url('FAL_JWKS_URL', ['http:', 'https:']) ?? 'https://rest.alpha.fal.ai/.well-known/jwks.json',
    falWebhookGraceMs: int('FAL_WEBHOOK_GRACE_MS', 30_000, 0, 3_600_000),
    statusStreamsMax: int('STATUS_STREAMS_MAX', 256, 0, 100_000),
    statusPollRps: int('STATUS_POLL_RPS', 200, 0, 1_000_000),
    falMaxConnections: int('FAL_MAX_CONNECTIONS', 128, 1, 10_000),
    maxInFlight: int('MAX_IN_FLIGHT', 2_000, 1, 1_000_000),
    shutdownGraceMs: int('SHUTDOWN_GRACE_MS', 30_000, 0, 3_600_000),
    corsOrigins: (str('CORS_ORIGINS') ?? '').split(',').map((o) => o.trim()).filter(Boolean),
    reconcileIntervalMs: int('RECONCILE_INTERVAL_MS', 60_000, 0, 86_400_000),
    leaseRenewMs: int('LEASE_RENEW_MS', DEFAULT_LEASE_RENEW_MS, 100, 60_000),
    leaseExpiryMs: int('LEASE_EXPIRY_MS', DEFAULT_LEASE_EXPIRY_MS, 1_000, 600_000),
    jobGiveUpMs: 0,
    emulatorLatencyMs: str('EMULATOR_LATENCY_MS') === undefined ? undefined : int('EMULATOR_LATENCY_MS', 0, 0, 3_600_000),
    emulatorImageMode: imageMode as Config['emulatorImageMode'],
    defaultRpmLimit: int('DEFAULT_RPM_LIMIT', 600, 0, 1_000_000),
    redisUrl: secretUrl('REDIS_URL', ['redis:', 'rediss:']),
    redisKeyPrefix: str('REDIS_KEY_PREFIX') ?? 'images-gw:rl',
    imageHostsAllowed,
    imageMaxBytes: int('IMAGE_MAX_BYTES', 64 * 1024 * 1024, 1024, 2 ** 31 - 1),
    imageFetchTimeoutMs: int('IMAGE_FETCH_TIMEOUT_MS', 30_000, 100, 600_000),
    editImageMaxBytes: int('EDIT_IMAGE_MAX_BYTES', 25 * 1024 * 1024, 1024, 2 ** 31 - 1),
    editImageHostsAllowed: hostList('EDIT_IMAGE_HOSTS_ALLOWED', str('EDIT_IMAGE_HOSTS_ALLOWED'), problems) ?? [],
    loraDir,
    loraMaxBytes: int('LORA_MAX_BYTES', 2 * 1024 ** 3, 1, Number.MAX_SAFE_INTEGER),
    loraUploadTtlS: int('LORA_UPLOAD_TTL_S', 7 * 86_400, 60, 365 * 86_400),
    modelPrices: parseModelPrices(str('MODEL_PRICES'), problems),
    shutdownMinDrainMs: int('SHUTDOWN_MIN_DRAIN_MS', 5_000, 0, 600_000),
    headersTimeoutMs: int('HEADERS_TIMEOUT_MS', 10_000, 100, 600_000),
    bodyTimeoutMs: int('BODY_TIMEOUT_MS', 30_000, 100, 3_600_000),
    maxConnections: 0,
    rateLimitFailClosed: bool('RATE_LIMIT_FAIL_CLOSED', false),
  };
  // Room above MAX_IN_FLIGHT for the connections that are not image requests in
  // progress: idle keep-alive, health checks, scrapes, and requests being refused.
  config.maxConnections = int('MAX_CONNECTIONS', Math.max(2 * config.maxInFlight, config.maxInFlight + 100), 1, 10_000_000);
  if (config.maxConnections <= config.maxInFlight) {
    problems.push(`MAX_CONNECTIONS (${config.maxConnections}) must be greater than MAX_IN_FLIGHT (${config.maxInFlight}): at the connection cap a request is reset instead of answered 429`);
  }
  if (config.bodyTimeoutMs < config.headersTimeoutMs) {
    problems.push(`BODY_TIMEOUT_MS (${config.bodyTimeoutMs}) must be at least HEADERS_TIMEOUT_MS (${config.headersTimeoutMs}): the whole request includes its headers`);
  }
  // By default a request is only reconciled once no live process could still
  // be working on it: our own deadline plus a margin.
  config.reconcileAfterMs = int('RECONCILE_AFTER_MS', config.requestTimeoutMs + 60_000, 0, 7 * 86_400_000);
  config.jobGiveUpMs = int('JOB_GIVE_UP_MS', Math.max(DEFAULT_GIVE_UP_AFTER_MS, giveUpFloorMs(config) + 60_000), 1_000, 7 * 86_400_000);
  if (config.jobGiveUpMs <= giveUpFloorMs(config)) problems.push(`JOB_GIVE_UP_MS (${config.jobGiveUpMs}) must be more than REQUEST_TIMEOUT_MS + LEASE_EXPIRY_MS (${giveUpFloorMs(config)}): a job is given up only once no live process can still be waiting on it`);
  if (config.loraUploadTtlS * 1000 <= loraReuseMarginMs(config)) {
    problems.push(`LORA_UPLOAD_TTL_S must be longer than REQUEST_TIMEOUT_MS + 60 s (${loraReuseMarginMs(config) / 1000} s): an uploaded LoRA must outlive the job that reads it`);
  }
  if (config.leaseRenewMs * 2 > config.leaseExpiryMs) {
    problems.push(`LEASE_RENEW_MS (${config.leaseRenewMs}) must be at most half of LEASE_EXPIRY_MS (${config.leaseExpiryMs}): one late renewal must not let a live process's lease expire`);
  }
  if (config.databaseUrl && !config.fileUrlSecret && (config.falBaseUrl || config.embeddedEmulator)) {
    problems.push('DATABASE_URL with images served from this origin (FAL_BASE_URL or the bundled emulator) needs FILE_URL_SECRET: every replica must verify the image URLs another one signed');
  }
  if (config.falWebhooks && !config.publicBaseUrl) problems.push('FAL_WEBHOOKS needs PUBLIC_BASE_URL: the address fal posts job callbacks to');
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/** A comma-separated host list (hostnames, `*.suffix` wildcards, IP literals), normalized; undefined when unset. */
function hostList(name: string, raw: string | undefined, problems: string[]): string[] | undefined {
  if (raw === undefined) return undefined;
  const out: string[] = [];
  for (const entry of raw.split(',').map((h) => h.trim()).filter(Boolean)) {
    const host = normalizeHostPattern(entry);
    if (host === null) problems.push(`${name} entries must be hostnames, *.suffix wildcards or IP addresses, without scheme or port (got ${JSON.stringify(entry)})`);
    else out.push(host);
  }
  return out;
}
