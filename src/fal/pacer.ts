/**
 * A token bucket for status polls. With thousands of jobs waiting, per-job
 * backoff alone still adds up to thousands of requests a second; the bucket
 * caps the total, and waiting polls queue in order (each a closure, no socket).
 */
export interface Pacer {
  /** Resolves when a poll may be sent; resolves early (without a token) if `signal` aborts. */
  take(signal?: AbortSignal): Promise<void>;
  readonly queued: number;
}

/**
 * One poll waiting for a token: the record is also its abort listener
 * (handleEvent), so a queued poll costs this object and its promise, no
 * closures. With 10,000 jobs polling at 200/s, most of them sit here.
 */
class Waiter {
  constructor(
    private resolve: (() => void) | undefined,
    private readonly signal: AbortSignal | undefined,
    private readonly queue: Set<Waiter>,
  ) {}

  /** Given a token, or the wait was abandoned: either way the poll goes on. */
  release(): void {
    const resolve = this.resolve;
    if (!resolve) return;
    this.resolve = undefined;
    this.queue.delete(this);
    this.signal?.removeEventListener('abort', this);
    resolve();
  }

  handleEvent(): void {
    this.release();
  }
}

export function createPacer(ratePerSecond: number, burst = Math.max(1, Math.ceil(ratePerSecond / 10))): Pacer {
  if (!(ratePerSecond > 0)) return { take: async () => {}, queued: 0 };
  let tokens = burst;
  let last = performance.now();
  // Insertion-ordered, and an aborted wait leaves it in O(1) (an array's indexOf was O(n) per abort).
  const waiters = new Set<Waiter>();
  let timer: NodeJS.Timeout | undefined;

  const refill = () => {
    const now = performance.now();
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * ratePerSecond);
    last = now;
  };
  const pump = () => {
    timer = undefined;
    refill();
    for (const w of waiters) {
      if (tokens < 1) break;
      tokens -= 1;
      w.release();
    }
    if (waiters.size > 0) timer = setTimeout(pump, Math.ceil(((1 - tokens) / ratePerSecond) * 1000));
  };

  return {
    get queued() {
      return waiters.size;
    },
    take(signal) {
      refill();
      if (waiters.size === 0 && tokens >= 1) {
        tokens -= 1;
        return Promise.resolve();
      }
      if (signal?.aborted) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const w = new Waiter(resolve, signal, waiters);
        waiters.add(w);
        signal?.addEventListener('abort', w, { once: true });
        if (!timer) timer = setTimeout(pump, Math.ceil(((1 - tokens) / ratePerSecond) * 1000));
      });
    },
  };
}
