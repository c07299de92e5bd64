import { performance } from 'node:perf_hooks';

/**
 * A closed-loop load generator: `concurrency` workers, each sending its next
 * request as soon as the previous one answered. Closed loop on purpose: it
 * measures what a path adds per request without queueing the generator's own
 * backlog into the figures, and at high concurrency it finds saturation.
 */

export interface Outcome {
  /** The upstream's id for the job (fal's request id), to join with the upstream's own records. */
  upstreamId?: string;
  /** Wall clock (Date.now()) when the client held the full response; same clock as upstream timestamps. */
  doneAtMs: number;
}

/** One request through a path; resolves once the full response is read, throws on any failure. */
export type Call = (signal: AbortSignal) => Promise<Outcome>;

export interface LoadOptions {
  concurrency: number;
  /** Runs before the window and is not recorded: connection set-up, JIT, pools. */
  warmupMs: number;
  durationMs: number;
  /** Upper bound on requests started inside the window, whatever the duration. */
  maxRequests: number;
  requestTimeoutMs: number;
  /** Called as the measured window opens and closes (to read other processes' counters over exactly that window). */
  onWindow?: { open(): void; close(): void };
}

export interface LoadResult {
  /** Latency of every request started inside the window, in ms. */
  latencyMs: number[];
  outcomes: Outcome[];
  /** Requests that finished inside the window. */
  completedInWindow: number;
  errors: number;
  firstError: string | undefined;
  windowMs: number;
  /** Completions per second inside the window. */
  throughput: number;
  /** Process CPU (user + system, every thread) per completed request, ms. */
  cpuMsPerRequest: number;
  /** Share of the window the event loop was busy (0..1); near 1 means this process is the bottleneck. */
  eventLoopUtilization: number;
}

export async function runLoad(call: Call, opts: LoadOptions): Promise<LoadResult> {
  const latencyMs: number[] = [];
  const outcomes: Outcome[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let completedInWindow = 0;
  let startedInWindow = 0;

  let windowStart: number | undefined;
  let windowEnd: number | undefined;
  let cpu0: NodeJS.CpuUsage | undefined;
  let cpu1: NodeJS.CpuUsage | undefined;
  let elu0: ReturnType<typeof performance.eventLoopUtilization> | undefined;
  let elu1: ReturnType<typeof performance.eventLoopUtilization> | undefined;
  let closeTimer: NodeJS.Timeout | undefined;

  const openWindow = () => {
    windowStart = performance.now();
    cpu0 = process.cpuUsage();
    elu0 = performance.eventLoopUtilization();
    opts.onWindow?.open();
    closeTimer = setTimeout(closeWindow, opts.durationMs);
  };
  const closeWindow = () => {
    if (windowEnd !== undefined) return;
    windowEnd = performance.now();
    cpu1 = process.cpuUsage(cpu0);
    elu1 = performance.eventLoopUtilization(elu0);
    opts.onWindow?.close();
    clearTimeout(closeTimer);
  };
  // Timers, not a check per request: under load the first request to notice
  // the boundary may be late, and the window must not depend on it.
  const openTimer = setTimeout(openWindow, opts.warmupMs);

  const worker = async () => {
    while (windowEnd === undefined) {
      const measured = windowStart !== undefined;
      if (measured && ++startedInWindow > opts.maxRequests) {
        closeWindow();
        break;
      }
      const t0 = performance.now();
      try {
        const out = await call(AbortSignal.timeout(opts.requestTimeoutMs));
        const t1 = performance.now();
        if (measured) {
          latencyMs.push(t1 - t0);
          outcomes.push(out);
        }
        if (windowStart !== undefined && windowEnd === undefined && t1 >= windowStart) completedInWindow++;
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        // A path that fails instantly would otherwise spin and starve the event loop.
        if (errors > 50 && errors > latencyMs.length) {
          closeWindow();
          break;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  };

  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  clearTimeout(openTimer);
  if (windowStart === undefined) openWindow();
  closeWindow();

  const windowMs = windowEnd! - windowStart!;
  const cpuMs = (cpu1!.user + cpu1!.system) / 1000;
  return {
    latencyMs,
    outcomes,
    completedInWindow,
    errors,
    firstError,
    windowMs,
    throughput: completedInWindow / (windowMs / 1000),
    cpuMsPerRequest: completedInWindow > 0 ? cpuMs / completedInWindow : Number.NaN,
    eventLoopUtilization: elu1!.utilization,
  };
}
