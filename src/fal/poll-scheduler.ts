import type { FalJobStatus } from './gateway.js';

/**
 * Status polling for every job that waits without a status stream or a
 * webhook, as one schedule: each waiting job is a record in a queue, not a
 * loop of its own. A loop per job would keep, for minutes, an async frame, a
 * promise per await, a sleep timer and a place in the rate limiter's queue;
 * with thousands of jobs waiting that would be most of the process.
 *
 * Per job: poll at once, then after `firstDelayMs`, growing ×1.5 up to
 * `maxDelayMs`; across all jobs at most `ratePerSecond` polls a second
 * (a token bucket; due polls queue in the order they fell due).
 */
export interface PollScheduler {
  /**
   * Resolves when a poll says COMPLETED; rejects with the poll's error, or
   * with `aborted(signal)` as soon as `signal` aborts.
   */
  wait(job: PollTarget, signal: AbortSignal | undefined, onStatus: ((s: FalJobStatus) => void) | undefined, firstDelayMs: number): Promise<void>;
  /** Jobs waiting (due or sleeping). */
  readonly waiting: number;
}

export interface PollTarget {
  endpoint: string;
  falRequestId: string;
}

export interface PollSchedulerOptions {
  /** One status call; `signal` is the job's. */
  poll(endpoint: string, falRequestId: string, signal: AbortSignal | undefined): Promise<FalJobStatus>;
  /** The error a wait rejects with when its signal aborts. */
  aborted(signal: AbortSignal): Error;
  /** Polls per second across all jobs; 0 = no cap. */
  ratePerSecond: number;
  burst?: number;
  maxDelayMs: number;
}

/** One waiting job. It is its own abort listener (handleEvent): no closures. */
class PollWait {
  /** When it may be polled next (performance.now()); its place in the sleeping heap. */
  dueAt = 0;
  /** Settled or aborted: skipped wherever it still sits. */
  done = false;

  constructor(
    readonly endpoint: string,
    readonly falRequestId: string,
    readonly signal: AbortSignal | undefined,
    readonly onStatus: ((s: FalJobStatus) => void) | undefined,
    public delayMs: number,
    private resolve: (() => void) | undefined,
    private reject: ((err: unknown) => void) | undefined,
    private readonly scheduler: Scheduler,
  ) {}

  settle(err?: unknown): void {
    if (this.done) return;
    this.done = true;
    const { resolve, reject } = this;
    this.resolve = this.reject = undefined;
    this.signal?.removeEventListener('abort', this);
    this.scheduler.forget(this);
    if (err === undefined) resolve!();
    else reject!(err);
  }

  handleEvent(): void {
    this.settle(this.scheduler.opts.aborted(this.signal!));
  }
}

class Scheduler implements PollScheduler {
  /** Due, waiting for a token, in the order they fell due. */
  private readonly due = new Set<PollWait>();
  /** Waiting for their next poll time: a binary min-heap on dueAt (abandoned ones are skipped when they surface). */
  private readonly sleeping: PollWait[] = [];
  private live = 0;
  private tokens: number;
  private readonly burst: number;
  private last = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;

  constructor(readonly opts: PollSchedulerOptions) {
    this.burst = opts.burst ?? Math.max(1, Math.ceil(opts.ratePerSecond / 10));
    this.tokens = this.burst;
  }

  get waiting(): number {
    return this.live;
  }

  wait(job: PollTarget, signal: AbortSignal | undefined, onStatus: ((s: FalJobStatus) => void) | undefined, firstDelayMs: number): Promise<void> {
    if (signal?.aborted) return Promise.reject(this.opts.aborted(signal));
    return new Promise<void>((resolve, reject) => {
      const w = new PollWait(job.endpoint, job.falRequestId, signal, onStatus, firstDelayMs, resolve, reject, this);
      this.live++;
      signal?.addEventListener('abort', w, { once: true });
      this.due.add(w);
      this.pump();
    });
  }

  /** A wait ended: out of the due queue now; out of the heap when it surfaces. */
  forget(w: PollWait): void {
    this.live--;
    this.due.delete(w);
  }

  private refill(now: number): void {
    if (!(this.opts.ratePerSecond > 0)) return;
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.opts.ratePerSecond);
    this.last = now;
  }

  /** Moves sleepers whose time has come to the due queue, sends what the budget allows, and sets the one timer. */
  private pump(): void {
    const now = performance.now();
    const heap = this.sleeping;
    while (heap.length > 0 && heap[0]!.dueAt <= now) {
      const w = popMin(heap);
      if (!w.done) this.due.add(w);
    }
    this.refill(now);
    const capped = this.opts.ratePerSecond > 0;
    for (const w of this.due) {
      if (capped && this.tokens < 1) break;
      if (capped) this.tokens -= 1;
      this.due.delete(w);
      this.send(w);
    }
    // Drop abandoned sleepers from the top so the timer is set for a live one.
    while (heap.length > 0 && heap[0]!.done) popMin(heap);
    let next = heap.length > 0 ? heap[0]!.dueAt : Infinity;
    if (this.due.size > 0) next = Math.min(next, now + ((1 - this.tokens) / this.opts.ratePerSecond) * 1000);
    this.arm(next, now);
  }

  private arm(at: number, now: number): void {
    if (at === Infinity) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Infinity;
      return;
    }
    // A timer already set for no later than this will pump in time.
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(this.onTimer, Math.max(1, Math.ceil(at - now)));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.timerAt = Infinity;
    this.pump();
  };

  private send(w: PollWait): void {
    this.opts.poll(w.endpoint, w.falRequestId, w.signal).then(
      (st) => this.polled(w, st),
      (err: unknown) => w.settle(err),
    );
  }

  private polled(w: PollWait, st: FalJobStatus): void {
    if (w.done) return;
    try {
      w.onStatus?.(st);
    } catch {
      // a listener's failure is not the job's
    }
    if (st.status === 'COMPLETED') {
      w.settle();
      return;
    }
    const now = performance.now();
    w.dueAt = now + w.delayMs;
    w.delayMs = Math.min(this.opts.maxDelayMs, Math.round(w.delayMs * 1.5));
    pushHeap(this.sleeping, w);
    if (w.dueAt < this.timerAt) this.arm(w.dueAt, now);
  }
}

export function createPollScheduler(opts: PollSchedulerOptions): PollScheduler {
  return new Scheduler(opts);
}

function pushHeap(h: PollWait[], w: PollWait): void {
  h.push(w);
  let i = h.length - 1;
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (h[p]!.dueAt <= w.dueAt) break;
    h[i] = h[p]!;
    i = p;
  }
  h[i] = w;
}

function popMin(h: PollWait[]): PollWait {
  const top = h[0]!;
  const last = h.pop()!;
  if (h.length > 0) {
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && h[r]!.dueAt < h[l]!.dueAt ? r : l;
      if (h[c]!.dueAt >= last.dueAt) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
  }
  return top;
}
