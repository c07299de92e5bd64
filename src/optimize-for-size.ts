import { setFlagsFromString } from 'node:v8';

/**
 * Runs the service's V8 heap in its memory-saving mode (`--optimize-for-size`)
 * while many requests wait: the old generation is collected when it has grown
 * by a small factor rather than doubled, and the young generation is shrunk
 * when idle. A departure from Node's defaults, kept for the figures below; the
 * service is otherwise run as Node runs it. `src/main.ts` applies
 * `HEAP_OPTIMIZE_FOR_SIZE`: `auto` (the default) turns the mode on from
 * `HEAP_OPTIMIZE_FOR_SIZE_FROM` requests in progress (1,000) and off again
 * below half of that, `true` keeps it on, `false` never sets it.
 *
 * Why: thousands of image requests wait for fal at once, and each one's
 * submit (body, validation, ledger rows, the fal client's request and
 * answer) lives long enough to be promoted out of the young generation:
 * about 23 KiB per job, of which about 12 KiB stays live while it waits.
 * On Node's defaults the rest stays in the old generation, garbage that
 * no full collection reclaims while the jobs wait, and it is what the
 * process's RSS settles at.
 *
 * Figure (bench/probes/waiting-garbage.ts, 4,000 jobs in polling mode, Node
 * 20, 2 vCPUs): RSS per waiting job 22.4–25.4 KiB on the defaults against
 * 16.9 KiB in this mode (old-space in use 13–15 KiB against 11.6–11.9 KiB,
 * live heap 11.8 KiB either way); bench/README.md has the full waiting
 * benchmark. The price is CPU while jobs are being submitted: the same probe
 * at 3,000 jobs measured 4.60 and 5.05 ms of service CPU per job in this mode
 * against 3.37 and 3.61 on the defaults (alternating runs, one machine, load
 * 1.8 to 3.1), for an RSS of 9.7 and 11.1 KiB per job against 32.4 and 31.6.
 * test/optimize-for-size.test.ts fails when the mode stops reducing the old
 * generation.
 *
 * Why only under load: the mode's price is paid on every request, and
 * memory per waiting job matters only when thousands wait. bench/overhead.ts
 * with the service in this mode throughout against the service on the
 * defaults (2 vCPUs, load 2.8–3.9, 3 alternating rounds) measured 3.37
 * against 2.60 ms of service CPU per request at 16 concurrent requests, 332
 * against 393 req/s (its path v keeps the comparison: `--paths=a,b,v`).
 * V8 reads the flag each time it sizes the heap, so it can be turned on
 * and off while the process runs: the fixture of test/optimize-for-size.test.ts,
 * set and then unset, grows its old generation as on the defaults, and
 * bench/waiting.ts (10,000 jobs, polling) measured 13.7 KiB of RSS per
 * waiting job with `auto` against 26.7 KiB with `HEAP_OPTIMIZE_FOR_SIZE=false`.
 *
 * Set at run time rather than on the command line: `NODE_OPTIONS` does not
 * accept this flag, and V8 reads it whenever it sizes the heap, so setting
 * it before the service starts has its effect on the old generation while
 * the young generation keeps the size it was configured with at start.
 */
export function optimizeForSize(): void {
  setHeapMode(true);
}

/** Sets or clears the mode; V8 applies it from its next sizing of the heap. */
export function setHeapMode(on: boolean): void {
  setFlagsFromString(on ? '--optimize-for-size' : '--no-optimize-for-size');
}

export interface HeapModeByLoad {
  readonly on: boolean;
  /** Looks at the load now (the timer calls it every `intervalMs`). */
  check(): void;
  stop(): void;
}

/**
 * `auto`: the mode on from `from` requests in progress, off below half of
 * it, so a load hovering at the threshold does not flip it on every check.
 */
export function heapModeByLoad(opts: { inProgress: () => number; from: number; intervalMs?: number; setMode?: (on: boolean) => void }): HeapModeByLoad {
  const setMode = opts.setMode ?? setHeapMode;
  let on = false;
  const check = (): void => {
    const n = opts.inProgress();
    if (!on && n >= opts.from) on = true;
    else if (on && n < opts.from / 2) on = false;
    else return;
    setMode(on);
  };
  const timer = setInterval(check, opts.intervalMs ?? 1_000);
  timer.unref();
  return {
    get on() {
      return on;
    },
    check,
    stop: () => clearInterval(timer),
  };
}
