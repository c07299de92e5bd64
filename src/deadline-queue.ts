/**
 * Many timeouts of one length on one timer. Thousands of jobs wait at once,
 * each with a deadline (and, with webhooks, a grace period); a `setTimeout`
 * each is a Timeout object and a closure per job for as long as it waits.
 * When every timeout in a queue has the same length, the order they were
 * started in is the order they expire in, so an insertion-ordered Set is the
 * whole schedule: one entry per waiting item, one timer for the earliest.
 *
 * Like Node's own timer lists, queues are shared per length (`forLength`).
 */
/** The longest delay setTimeout takes as it is. */
const MAX_TIMER_MS = 2_147_483_647;

export interface Expiring {
  /** When it expires, on `performance.now()`'s clock; set by the queue. */
  expiresAt: number;
  expire(): void;
}

export class DeadlineQueue {
  private static readonly byLength = new Map<number, DeadlineQueue>();

  /** The queue for timeouts of `ms` (one per length, for the process). */
  static forLength(ms: number): DeadlineQueue {
    let q = DeadlineQueue.byLength.get(ms);
    if (!q) {
      q = new DeadlineQueue(ms);
      DeadlineQueue.byLength.set(ms, q);
    }
    return q;
  }

  private readonly items = new Set<Expiring>();
  private timer: NodeJS.Timeout | undefined;

  private constructor(readonly ms: number) {
    if (!(ms >= 0) || !Number.isFinite(ms)) throw new RangeError(`timeout length must be a finite number of ms, not ${ms}`);
  }

  get size(): number {
    return this.items.size;
  }

  add(item: Expiring): void {
    item.expiresAt = performance.now() + this.ms;
    this.items.add(item);
    if (!this.timer) this.arm(item.expiresAt);
  }

  delete(item: Expiring): void {
    if (!this.items.delete(item)) return;
    // Nothing left to expire: no timer may keep the process alive for it.
    if (this.items.size === 0 && this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private arm(at: number): void {
    // Node's timers overflow past 2^31 - 1 ms (and then fire at once): a longer wait is armed in steps.
    this.timer = setTimeout(this.fire, Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(at - performance.now()))));
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    const now = performance.now();
    for (const item of this.items) {
      if (item.expiresAt > now) {
        this.arm(item.expiresAt);
        return;
      }
      this.items.delete(item);
      // One item failing must not strand the rest of the queue: its error is
      // thrown again on its own, as a timer callback's would be.
      try {
        item.expire();
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  };
}
