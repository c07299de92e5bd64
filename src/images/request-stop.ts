import type { StopReason } from '../metering/job-state.js';

/**
 * Why a request's fal work stops, on the request's one AbortController,
 * whose signal every fal call of the request carries. The caller's side
 * aborts it when the caller leaves (the route does, on the response closing);
 * this class aborts it for the deadline, shutdown (`Shutdown`, below) and a
 * sibling job failing. One controller per request: each AbortSignal is close
 * to 1 KB while a request waits (src/http/waiting-requests.ts).
 *
 * The first cause is the one reported, except that a sibling failing is no
 * cause: the request then failed on fal's answer, whatever happens after.
 */
export class RequestStop {
  readonly #controller: AbortController;
  #first: StopReason | 'sibling' | undefined = undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(controller: AbortController | undefined, private readonly shutdown: Shutdown | undefined) {
    this.#controller = controller ?? new AbortController();
    shutdown?.enter(this);
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** From now, the request has `ms` to finish its fal work. */
  startDeadline(ms: number): void {
    if (this.#timer || this.signal.aborted) return;
    // The reason AbortSignal.timeout gives.
    this.#timer = setTimeout(() => this.stop('deadline', new DOMException('The operation was aborted due to timeout', 'TimeoutError')), ms);
  }

  stop(cause: Exclude<StopReason, 'client_gone'> | 'sibling', reason?: unknown): void {
    if (this.signal.aborted) return;
    this.#first = cause;
    this.#controller.abort(reason);
  }

  /** Why the wait was cut short, if our side cut it: undefined while it runs, and when a sibling's failure stopped it. */
  reason(): StopReason | undefined {
    if (!this.signal.aborted) return undefined;
    if (this.#first === undefined) return 'client_gone';
    return this.#first === 'sibling' ? undefined : this.#first;
  }

  /** The request is over: nothing may hold it any more. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.shutdown?.leave(this);
  }
}

/**
 * The requests whose fal work is under way, for shutdown to stop: one set
 * entry each rather than a listener per request on a process-long signal.
 */
export class Shutdown {
  readonly #live = new Set<RequestStop>();
  #reason: unknown = undefined;
  #over = false;

  constructor(signal: AbortSignal | undefined) {
    if (signal?.aborted) this.#stopAll(signal.reason);
    else signal?.addEventListener('abort', () => this.#stopAll(signal.reason), { once: true });
  }

  enter(r: RequestStop): void {
    if (this.#over) r.stop('shutdown', this.#reason);
    else this.#live.add(r);
  }

  leave(r: RequestStop): void {
    this.#live.delete(r);
  }

  get size(): number {
    return this.#live.size;
  }

  #stopAll(reason: unknown): void {
    this.#over = true;
    this.#reason = reason;
    for (const r of this.#live) r.stop('shutdown', reason);
  }
}
