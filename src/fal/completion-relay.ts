/**
 * fal's job callbacks across replicas. Behind a balancer, fal's callback for
 * a job reaches whichever replica the balancer picks, usually not the one
 * whose caller waits for that job. Without this relay that caller would wait
 * for its grace period and then poll. With it, a replica that receives a
 * callback nobody waits for locally publishes the job id on a Redis channel.
 * Every other replica wakes its own waiter for that id, if it has one, or
 * remembers the id as an early callback, the same as a local one.
 *
 * Redis is a shortcut here, not a dependency: when it is down, a publish fails
 * (logged at most once per interval, and counted). The waiter then falls back
 * to polling after its grace period, as it would with no relay.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { CompletionHub, WaitOutcome } from './webhooks.js';

export interface CompletionRelayOptions {
  /** This process's hub: the relay wraps it. */
  hub: CompletionHub;
  redisUrl: string;
  /** The pub/sub channel; replicas of one deployment share it, others must not. */
  channel: string;
  logger: Logger;
  /** Called for each callback that could not be passed on (Redis down). */
  onPublishFailed?: () => void;
  warnIntervalMs?: number;
}

export interface CompletionRelay extends CompletionHub {
  /** Settles once the subscription is active, or its first attempt failed (the client keeps retrying). */
  ready(): Promise<void>;
  close(): Promise<void>;
  readonly stats: { published: number; received: number; woke: number; publishFailed: number };
}

export function createCompletionRelay(opts: CompletionRelayOptions): CompletionRelay {
  const { hub, channel, logger } = opts;
  // Tells this process's own messages apart: it has nothing to wake for them.
  const origin = randomBytes(8).toString('hex');
  const stats = { published: 0, received: 0, woke: 0, publishFailed: 0 };
  const warnEvery = opts.warnIntervalMs ?? 30_000;
  let lastWarn = -Infinity;
  const warn = (msg: string, err: unknown) => {
    if (Date.now() - lastWarn < warnEvery) return;
    lastWarn = Date.now();
    logger.warn({ err: { message: (err as Error)?.message ?? String(err) } }, msg);
  };

  const common = { lazyConnect: true, connectTimeout: 1_000, retryStrategy: (times: number) => Math.min(times * 200, 5_000) };
  // Publishing must fail fast when Redis is down, not queue behind a reconnect.
  const pub = new Redis(opts.redisUrl, { ...common, enableOfflineQueue: false, commandTimeout: 500, maxRetriesPerRequest: 1 });
  // A subscribed connection can do nothing else; ioredis re-subscribes it after a reconnect.
  const sub = new Redis(opts.redisUrl, { ...common, autoResubscribe: true });
  pub.on('error', (err) => warn('completion relay: Redis unreachable; callbacks for other replicas fall back to their polling', err));
  sub.on('error', (err) => warn('completion relay: Redis subscription down; callbacks from other replicas fall back to polling', err));
  sub.on('message', (_channel: string, message: string) => {
    const space = message.indexOf(' ');
    if (space <= 0 || message.slice(0, space) === origin) return;
    stats.received++;
    if (hub.notify(message.slice(space + 1))) stats.woke++;
  });

  const subscribed = Promise.all([
    pub.connect().catch(() => undefined),
    sub
      .connect()
      .then(() => sub.subscribe(channel))
      .then(
        () => undefined,
        (err: unknown) => warn('completion relay: could not subscribe yet; retrying in the background', err),
      ),
  ]).then(() => undefined);

  return {
    stats,
    get waiting() {
      return hub.waiting;
    },
    wait(falRequestId: string, signal?: AbortSignal, timeoutMs?: number): Promise<WaitOutcome> {
      return hub.wait(falRequestId, signal, timeoutMs);
    },
    notify(falRequestId: string): boolean {
      if (hub.notify(falRequestId)) return true;
      // Nobody here waits for it: the waiter is probably on another replica.
      stats.published++;
      pub.publish(channel, `${origin} ${falRequestId}`).catch((err: unknown) => {
        stats.publishFailed++;
        opts.onPublishFailed?.();
        warn('completion relay: could not publish a callback; its waiter will poll after the grace period', err);
      });
      return false;
    },
    ready() {
      return subscribed;
    },
    async close() {
      await subscribed;
      for (const client of [sub, pub]) {
        if (client.status === 'ready') {
          const quit = client.quit().then(() => undefined, () => undefined);
          await Promise.race([quit, new Promise((r) => setTimeout(r, 1_000).unref())]);
        }
        client.disconnect();
      }
    },
  };
}
