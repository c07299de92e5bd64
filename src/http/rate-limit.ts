/**
 * Per-key request rate limits (requests per minute) on the image route.
 *
 * Counting is done by rate-limiter-flexible: in this process's memory by
 * default, or in Redis when REDIS_URL is set so that every process behind a
 * load balancer draws from one budget per key. The limit protects capacity,
 * not money (budgets and the ledger do that and fail closed), so when Redis is
 * unreachable requests go through uncounted rather than the whole API going
 * down with a cache.
 */
import type { RequestHandler } from 'express';
import type { Logger } from 'pino';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { rateLimited } from '../errors.js';
import type { Principal } from './auth.js';

/** Read by the metrics exporter; only ever increases. */
export interface RateLimitStats {
  /** Requests let through uncounted because the limiter's store failed. */
  failOpen: number;
  /** Requests refused with 429 rate_limit_exceeded. */
  refused: number;
}

export type RateDecision =
  | { kind: 'allowed'; limit: number; remaining: number; resetMs: number }
  | { kind: 'refused'; limit: number; remaining: number; resetMs: number }
  | { kind: 'failed_open'; limit: number };

export interface KeyRateLimiter {
  readonly store: 'memory' | 'redis';
  readonly stats: Readonly<RateLimitStats>;
  /** Counts one request of `keyId` against `limit` requests per window. Never rejects. */
  take(keyId: string, limit: number): Promise<RateDecision>;
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
  /** Called on every fail-open, for a metric. */
  onFailOpen?: ((err: Error) => void) | undefined;
  /** Called on every refusal, for a metric. */
  onRefused?: (() => void) | undefined;
  /** Shortest time between two warnings about the store being down; default 30 s. */
  warnIntervalMs?: number | undefined;
  /** Longest wait for one Redis command before failing open; default 500 ms. */
  commandTimeoutMs?: number | undefined;
  /** Window length in seconds; 60 for requests per minute. */
  windowS?: number | undefined;
}

export const DEFAULT_REDIS_KEY_PREFIX = 'images-gw:rl';

export function createKeyRateLimiter(opts: KeyRateLimiterOptions): KeyRateLimiter {
  const logger = opts.logger;
  const windowS = opts.windowS ?? 60;
  const prefix = opts.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX;
  const warnIntervalMs = opts.warnIntervalMs ?? 30_000;
  const stats: RateLimitStats = { failOpen: 0, refused: 0 };

  const redis = opts.redisUrl ? createRedisClient(opts.redisUrl, opts.commandTimeoutMs ?? 500) : undefined;
  const connectWarning = throttled(warnIntervalMs);
  const failOpenWarning = throttled(warnIntervalMs);
  let wasDown = false;
  if (redis) {
    // Without a listener ioredis prints every reconnect failure to stderr;
    // one warning per interval says the same.
    redis.on('error', (err: Error) => {
      wasDown = true;
      connectWarning((suppressed) =>
        logger.warn({ err: { message: err.message }, suppressed }, 'rate-limit Redis unreachable; per-key limits fail open until it is back'),
      );
    });
    redis.on('ready', () => {
      if (wasDown) logger.info('rate-limit Redis reachable again; per-key limits enforced');
      wasDown = false;
    });
  }
  const connecting = redis
    ? redis.connect().then(
        () => undefined,
        () => undefined,
      )
    : Promise.resolve();

  // A limiter holds one `points` value, and keys differ in their limit: one
  // limiter per distinct limit, its value in the key prefix so a key whose
  // limit changes starts a fresh window instead of inheriting a wrong count.
  const limiters = new Map<number, RateLimiterAbstract>();
  const limiterFor = (limit: number): RateLimiterAbstract => {
    let l = limiters.get(limit);
    if (!l) {
      const base = { points: limit, duration: windowS, keyPrefix: `${prefix}:rpm${limit}` };
      l = redis
        ? new RateLimiterRedis({ ...base, storeClient: redis, rejectIfRedisNotReady: true })
        : new RateLimiterMemory(base);
      limiters.set(limit, l);
    }
    return l;
  };

  return {
    store: redis ? 'redis' : 'memory',
    stats,
    async take(keyId, limit) {
      try {
        const res = await limiterFor(limit).consume(keyId);
        return { kind: 'allowed', limit, remaining: res.remainingPoints, resetMs: res.msBeforeNext };
      } catch (err) {
        if (err instanceof RateLimiterRes) {
          stats.refused += 1;
          opts.onRefused?.();
          return { kind: 'refused', limit, remaining: err.remainingPoints, resetMs: err.msBeforeNext };
        }
        const error = err instanceof Error ? err : new Error(String(err));
        stats.failOpen += 1;
        opts.onFailOpen?.(error);
        failOpenWarning((suppressed) =>
          logger.warn(
            { err: { message: error.message }, store: redis ? 'redis' : 'memory', fail_open_total: stats.failOpen, suppressed },
            'rate limits failing open: the limiter store is unavailable',
          ),
        );
        return { kind: 'failed_open', limit };
      }
    },
    ready() {
      return connecting;
    },
    async close() {
      if (!redis) return;
      await connecting;
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

/** Runs `log` at most once per interval, telling it how many calls it swallowed since. */
function throttled(intervalMs: number): (log: (suppressed: number) => void) => void {
  let last = -Infinity;
  let suppressed = 0;
  return (log) => {
    const now = Date.now();
    if (now - last < intervalMs) {
      suppressed += 1;
      return;
    }
    last = now;
    log(suppressed);
    suppressed = 0;
  };
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
