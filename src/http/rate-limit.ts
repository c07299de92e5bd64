/**
 * Per-key request rate limits (requests per minute) on the image route.
 *
 * Counting is done by rate-limiter-flexible: in this process's memory by
 * default, or in Redis when REDIS_URL is set so that every process behind a
 * load balancer draws from one budget per key. The limit protects capacity,
 * not money (budgets and the ledger do that and fail closed), so by default
 * when Redis is unreachable requests go through uncounted rather than the
 * whole API going down with a cache; RATE_LIMIT_FAIL_CLOSED chooses 503
 * instead. Either way the outage is visible: one warning when it starts, one
 * line when it ends, a readiness check, and counters.
 */
import type { RequestHandler } from 'express';
import type { Logger } from 'pino';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { rateLimited, serviceUnavailable } from '../errors.js';
import type { Principal } from './auth.js';

/** Read by the metrics exporter; only ever increases. */
export interface RateLimitStats {
  /** Requests let through uncounted because the limiter's store failed. */
  failOpen: number;
  /** Requests refused with 503 because the limiter's store failed (RATE_LIMIT_FAIL_CLOSED). */
  failClosed: number;
  /** Requests refused with 429 rate_limit_exceeded. */
  refused: number;
}

export type RateDecision =
  | { kind: 'allowed'; limit: number; remaining: number; resetMs: number }
  | { kind: 'refused'; limit: number; remaining: number; resetMs: number }
  | { kind: 'failed_open'; limit: number }
  | { kind: 'failed_closed'; limit: number };

export interface KeyRateLimiter {
  readonly store: 'memory' | 'redis';
  readonly stats: Readonly<RateLimitStats>;
  /** Counts one request of `keyId` against `limit` requests per window. Never rejects. */
  take(keyId: string, limit: number): Promise<RateDecision>;
  /** Whether the store answers now (a PING to Redis, bounded by the command timeout); never rejects. */
  check(): Promise<boolean>;
  /**
   * Settles once the store is connected or its first connection attempt has
   * failed (never rejects), so a service does not start with a window in which
   * every request fails open merely because the socket is still opening.
   */
  ready(): Promise<void>;
  close(): Promise<void>;
}

export interface KeyRateLimiterOptions {
  logger: Logger;
  /** redis:// or rediss:// URL; unset = in-process counting. */
  redisUrl?: string | undefined;
  /** Namespace of the Redis keys, so deployments can share one Redis. */
  keyPrefix?: string | undefined;
  /** When the store fails: refuse (`failed_closed`) instead of letting the request through uncounted. */
  failClosed?: boolean | undefined;
  /** Called on every fail-open, for a metric. */
  onFailOpen?: ((err: Error) => void) | undefined;
  /** Called on every fail-closed refusal, for a metric. */
  onFailClosed?: (() => void) | undefined;
  /** Called on every refusal, for a metric. */
  onRefused?: (() => void) | undefined;
  /** Called when the store is seen to go down or come back (and once at start for the memory store). */
  onStoreState?: ((up: boolean) => void) | undefined;
  /** Longest wait for one Redis command before failing open; default 500 ms. */
  commandTimeoutMs?: number | undefined;
  /** Window length in seconds; 60 for requests per minute. */
  windowS?: number | undefined;
}

export const DEFAULT_REDIS_KEY_PREFIX = 'images-gw:rl';

export function createKeyRateLimiter(opts: KeyRateLimiterOptions): KeyRateLimiter {
  const windowS = opts.windowS ?? 60;
  const prefix = opts.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX;
  const stats: RateLimitStats = { failOpen: 0, failClosed: 0, refused: 0 };

  const redis = opts.redisUrl ? createRedisClient(opts.redisUrl, opts.commandTimeoutMs ?? 500) : undefined;
  const health = storeHealth(opts, stats);
  let closing = false;
  if (redis) {
    // Without an 'error' listener ioredis prints every reconnect failure to stderr.
    redis.on('error', (err: Error) => !closing && health.down(err.message));
    redis.on('close', () => !closing && health.down('connection closed'));
    redis.on('ready', () => health.up());
  } else {
    health.up();
  }
  const connecting = redis ? redis.connect().then(() => undefined, () => undefined) : Promise.resolve();
  const limiterFor = limitersByLimit(redis, windowS, prefix);

  return {
    store: redis ? 'redis' : 'memory',
    stats,
    async take(keyId, limit) {
      try {
        const res = await limiterFor(limit).consume(keyId);
        health.up();
        return { kind: 'allowed', limit, remaining: res.remainingPoints, resetMs: res.msBeforeNext };
      } catch (err) {
        if (err instanceof RateLimiterRes) {
          health.up();
          stats.refused += 1;
          opts.onRefused?.();
          return { kind: 'refused', limit, remaining: err.remainingPoints, resetMs: err.msBeforeNext };
        }
        const error = err instanceof Error ? err : new Error(String(err));
        health.down(error.message);
        if (opts.failClosed) {
          stats.failClosed += 1;
          opts.onFailClosed?.();
          return { kind: 'failed_closed', limit };
        }
        stats.failOpen += 1;
        opts.onFailOpen?.(error);
        return { kind: 'failed_open', limit };
      }
    },
    async check() {
      if (!redis) return true;
      try {
        await redis.ping();
        health.up();
        return true;
      } catch (err) {
        health.down(err instanceof Error ? err.message : String(err));
        return false;
      }
    },
    ready() {
      return connecting;
    },
    async close() {
      if (!redis) return;
      await connecting;
      closing = true;
      if (redis.status === 'ready') {
        // QUIT lets replies in flight arrive; a Redis that stopped answering
        // must not hold shutdown, hence the bound.
        const quit = redis.quit().then(() => undefined, () => undefined);
        await Promise.race([quit, new Promise((r) => setTimeout(r, 1_000).unref())]);
      }
      redis.disconnect();
    },
  };
}

/**
 * A limiter holds one `points` value, and keys differ in their limit: one
 * limiter per distinct limit, its value in the key prefix so a key whose
 * limit changes starts a fresh window instead of inheriting a wrong count.
 */
function limitersByLimit(redis: Redis | undefined, windowS: number, prefix: string): (limit: number) => RateLimiterAbstract {
  const limiters = new Map<number, RateLimiterAbstract>();
  return (limit) => {
    let l = limiters.get(limit);
    if (!l) {
      const base = { points: limit, duration: windowS, keyPrefix: `${prefix}:rpm${limit}` };
      l = redis ? new RateLimiterRedis({ ...base, storeClient: redis, rejectIfRedisNotReady: true }) : new RateLimiterMemory(base);
      limiters.set(limit, l);
    }
    return l;
  };
}

/**
 * Whether the store answers, as last seen, and the log lines of an outage: one
 * warning when it starts (however many requests meet it), one info line when
 * the store answers again, with what the outage cost.
 */
function storeHealth(opts: KeyRateLimiterOptions, stats: Readonly<RateLimitStats>): { up(): void; down(reason: string): void } {
  let state: 'unknown' | 'up' | 'down' = 'unknown';
  let outage = { since: 0, failOpen: 0, failClosed: 0 };
  const policy = opts.failClosed ? 'fail_closed' : 'fail_open';
  return {
    up() {
      if (state === 'up') return;
      const wasDown = state === 'down';
      state = 'up';
      opts.onStoreState?.(true);
      if (!wasDown) return;
      opts.logger.info(
        { outage_ms: Date.now() - outage.since, fail_open: stats.failOpen - outage.failOpen, fail_closed: stats.failClosed - outage.failClosed },
        'rate-limit store answers again: per-key limits enforced',
      );
    },
    down(reason) {
      if (state === 'down') return;
      state = 'down';
      outage = { since: Date.now(), failOpen: stats.failOpen, failClosed: stats.failClosed };
      opts.onStoreState?.(false);
      opts.logger.warn(
        { err: { message: reason }, policy },
        policy === 'fail_closed'
          ? 'rate-limit store unavailable: image requests under a limit answer 503 until it is back'
          : 'rate-limit store unavailable: per-key limits fail open (requests served uncounted) until it is back',
      );
    },
  };
}

/**
 * ioredis by default queues commands while disconnected and retries them
 * without end: a request would wait for Redis instead of failing open. Every
 * option here bounds how long a command can take when Redis is down or slow.
 */
function createRedisClient(url: string, commandTimeoutMs: number): Redis {
  return new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    connectTimeout: 1_000,
    commandTimeout: commandTimeoutMs,
    maxRetriesPerRequest: 1,
    retryStrategy: (times) => Math.min(times * 200, 5_000),
  });
}

/**
 * OpenAI's duration format for `x-ratelimit-reset-*` (Go's): `120ms`, `1s`,
 * `1.5s`, `6m0s`, `1h0m0s`. SDKs and routers parse it as such.
 */
export function formatResetDuration(ms: number): string {
  const total = Math.max(0, Math.ceil(ms));
  if (total === 0) return '0s';
  if (total < 1_000) return `${total}ms`;
  const h = Math.floor(total / 3_600_000);
  const m = Math.floor((total % 3_600_000) / 60_000);
  const s = `${(total % 60_000) / 1_000}s`;
  if (h > 0) return `${h}h${m}m${s}`;
  if (m > 0) return `${m}m${s}`;
  return s;
}

export function rateLimitHeaders(d: { limit: number; remaining: number; resetMs: number }): Record<string, string> {
  return {
    'x-ratelimit-limit-requests': String(d.limit),
    'x-ratelimit-remaining-requests': String(Math.max(0, d.remaining)),
    'x-ratelimit-reset-requests': formatResetDuration(d.resetMs),
  };
}

/** Long enough for a Redis failover or restart, short enough that callers come back soon after. */
const FAIL_CLOSED_RETRY_AFTER_S = 5;

export interface RateLimitOptions {
  limiter: KeyRateLimiter;
  /** For keys without their own `rpm_limit`; 0 = unlimited. */
  defaultRpm: number;
}

/**
 * Runs after authentication. A key's own `rpm_limit` wins over the default;
 * a limit of 0 means unlimited (and no `x-ratelimit-*` headers, as there is
 * nothing to report).
 */
export function rateLimit(opts: RateLimitOptions): RequestHandler {
  return async (_req, res, next) => {
    const principal = res.locals.principal as Principal | undefined;
    if (!principal) throw new Error('rateLimit() must run after requireKey()');
    const limit = principal.rpmLimit ?? opts.defaultRpm;
    if (limit <= 0) return next();
    const d = await opts.limiter.take(principal.keyId, limit);
    if (d.kind === 'failed_open') return next();
    if (d.kind === 'failed_closed') {
      throw serviceUnavailable('Rate limiting is unavailable, so the request was not processed. Try again shortly.', FAIL_CLOSED_RETRY_AFTER_S, 'rate_limiter_unavailable');
    }
    const headers = rateLimitHeaders(d);
    if (d.kind === 'refused') {
      throw rateLimited(
        `Rate limit reached for this API key: ${d.limit} requests per minute. Try again in ${headers['x-ratelimit-reset-requests']}.`,
        d.resetMs / 1_000,
        'rate_limit_exceeded',
        headers,
      );
    }
    // Set now so that every answer to an admitted request carries them,
    // errors from later stages included.
    res.set(headers);
    next();
  };
}
