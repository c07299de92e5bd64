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

export function createPacer(ratePerSecond: number, burst = Math.max(1, Math.ceil(ratePerSecond / 10))): Pacer {
  if (!(ratePerSecond > 0)) return { take: async () => {}, queued: 0 };
  let tokens = burst;
  let last = performance.now();
  const waiters: Array<() => void> = [];
  let timer: NodeJS.Timeout | undefined;

  const refill = () => {
    const now = performance.now();
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * ratePerSecond);
    last = now;
  };
  const pump = () => {
    timer = undefined;
    refill();
    while (waiters.length > 0 && tokens >= 1) {
      tokens -= 1;
      waiters.shift()!();
    }
    if (waiters.length > 0) timer = setTimeout(pump, Math.ceil(((1 - tokens) / ratePerSecond) * 1000));
  };

  return {
    get queued() {
      return waiters.length;
    },
    take(signal) {
      refill();
      if (waiters.length === 0 && tokens >= 1) {
        tokens -= 1;
        return Promise.resolve();
      }
      return new Promise<void>((resolve) => {
        const done = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          const i = waiters.indexOf(done);
          if (i >= 0) waiters.splice(i, 1);
          resolve();
        };
        waiters.push(done);
        signal?.addEventListener('abort', onAbort, { once: true });
        if (!timer) timer = setTimeout(pump, Math.ceil(((1 - tokens) / ratePerSecond) * 1000));
      });
    },
  };
}
