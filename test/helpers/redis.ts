/**
 * Redis for the suites that need a shared store. It comes from
 * TEST_REDIS_URL, else the project machines' local server. When it cannot be
 * reached those suites are skipped with the reason, except under CI, where
 * they fail: CI must prove the shared-Redis path, not quietly skip it (the
 * same rule as PostgreSQL in databases.ts).
 */
import { randomBytes } from 'node:crypto';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { Redis } from 'ioredis';
import type { Availability } from './databases.js';

export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A client that gives up at once instead of reconnecting: tests want an answer, not patience. */
export function testRedisClient(): Redis {
  return new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 2_000,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
}

let probe: Promise<Availability> | undefined;

/** Whether REDIS_URL answers PING, asked once per process. */
export function redisAvailability(): Promise<Availability> {
  probe ??= (async (): Promise<Availability> => {
    const client = testRedisClient();
    client.on('error', () => {});
    try {
      await client.connect();
      await client.ping();
      return { ok: true };
    } catch (error) {
      return { ok: false, reason: (error as Error).message || String(error) };
    } finally {
      client.disconnect();
    }
  })();
  return probe;
}

/** A key prefix no other run (or concurrent test file) uses. */
export function uniqueRedisPrefix(label = 'test'): string {
  return `gw-test:${label}:${randomBytes(6).toString('hex')}`;
}

/** Deletes every key under `prefix`; returns how many there were. */
export async function deleteRedisKeys(prefix: string): Promise<number> {
  const client = testRedisClient();
  await client.connect();
  try {
    let deleted = 0;
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) deleted += await client.del(...keys);
    } while (cursor !== '0');
    return deleted;
  } finally {
    client.disconnect();
  }
}

/** Like `describe`, but only when Redis answers (and failing, not skipping, under CI). */
export async function describeWithRedis(title: string, suite: () => void): Promise<void> {
  const redis = await redisAvailability();
  describeIf(redis, `Redis not reachable at ${redactRedisUrl(REDIS_URL)}`, 'set TEST_REDIS_URL', title, suite);
}

/**
 * For suites that start (and stop, freeze, kill) a Redis of their own, which
 * the shared one must never be: needs the `redis-server` binary.
 */
export function describeWithRedisServer(title: string, suite: () => void): void {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  const found: Availability = r.status === 0 ? { ok: true } : { ok: false, reason: r.error?.message ?? r.stderr };
  describeIf(found, 'redis-server cannot be run', 'install redis-server', title, suite);
}

export interface OwnRedis {
  url: string;
  process: ChildProcess;
  /** SIGKILLs it (if running) and waits for the exit. */
  kill(): Promise<void>;
}

/** A throwaway redis-server on a free loopback port, nothing persisted. */
export async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `redis://127.0.0.1:${port}`;
  const own: OwnRedis = {
    url,
    process: child,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = new Redis(url, { lazyConnect: true, connectTimeout: 500, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.ping();
      return own;
    } catch (err) {
      if (Date.now() > deadline || child.exitCode !== null) {
        await own.kill();
        throw new Error(`redis-server did not start on port ${port}: ${(err as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      client.disconnect();
    }
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function describeIf(availability: Availability, what: string, fix: string, title: string, suite: () => void): void {
  if (availability.ok) {
    describe(title, suite);
    return;
  }
  const why = `${what}: ${availability.reason}`;
  if (process.env.CI) {
    describe(title, () => {
      it('needs Redis under CI', () => {
        throw new Error(`${why} (CI is set, so this fails instead of skipping; ${fix})`);
      });
    });
  } else {
    describe(title, { skip: `${why} (${fix} to run these)` }, () => {});
  }
}

function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable URL)';
  }
}

export interface RedisProxy {
  /** A redis:// URL that reaches REDIS_URL through the proxy. */
  url: string;
  /** Redis "goes away": open connections are reset and new ones are closed as soon as they are accepted. */
  cut(): void;
  /** Redis is back: new connections are passed through again. */
  restore(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy on a free loopback port in front of the shared Redis, so a
 * test can take Redis away from one service and give it back without
 * touching the Redis every other suite uses.
 */
export async function startRedisProxy(): Promise<RedisProxy> {
  const target = new URL(REDIS_URL);
  const open = new Set<Socket>();
  let passing = true;
  const track = (s: Socket): void => {
    open.add(s);
    s.on('error', () => {});
    s.once('close', () => open.delete(s));
  };
  const server = createServer((client) => {
    track(client);
    if (!passing) {
      client.destroy();
      return;
    }
    const upstream = connect(Number(target.port || 6379), target.hostname);
    track(upstream);
    client.pipe(upstream).pipe(client);
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const url = new URL(REDIS_URL);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return {
    url: url.toString(),
    cut() {
      passing = false;
      for (const s of open) s.destroy();
    },
    restore() {
      passing = true;
    },
    async close() {
      passing = false;
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
