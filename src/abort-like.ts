/**
 * What our fal layer needs of an abort signal: whether it fired, why, and a
 * listener for when it does. A real AbortSignal is one. A request's
 * RequestAbort (src/images/generate.ts) is another, much smaller one: an
 * AbortController per waiting request, with its signal's listener maps and a
 * hidden class of its own, was ~0.8 KB of every job that waits. Only the
 * calls actually in flight get a real signal (the transport's per-call one,
 * which follows whichever of these it is given).
 */
export interface AbortLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: AbortListener, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: AbortListener): void;
}

export type AbortListener = ((event: Event) => void) | { handleEvent(event: Event): void };

/**
 * A real AbortSignal that aborts with `parent` (an AbortSignal or any
 * AbortLike) until detached. It is its own listener (handleEvent): no closure.
 */
export class FollowingSignal {
  readonly controller = new AbortController();
  constructor(private readonly parent: AbortLike | undefined) {
    if (parent?.aborted) this.controller.abort(parent.reason);
    else parent?.addEventListener('abort', this, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  handleEvent(): void {
    this.controller.abort(this.parent!.reason);
  }

  detach(): void {
    this.parent?.removeEventListener('abort', this);
  }
}
