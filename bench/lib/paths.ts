import type { Call } from './load.js';

/**
 * What a benchmark compares: paths (ways of getting the same work done) in
 * front of upstreams (what finally does the work). Issue 3 has two paths on
 * one upstream, the fal emulator: (a) the fal client straight to it and
 * (b) our service. Issue 6 adds (c) Portkey and (d) its direct path on a
 * second upstream; they plug in here without touching the runner.
 */

export interface BenchUpstream {
  readonly label: string;
  /** Forgets past jobs and zeroes counters; called before each path's round. */
  reset(): void;
  /** When the upstream finished the job (ms, Date.now() clock), if it knows the id. */
  completedAtMs(upstreamId: string): number | undefined;
  /** Jobs seen and HTTP calls by kind since the last reset. */
  counters(): { jobs: number; calls: Record<string, number> };
}

export interface BenchPath {
  /** Short id used in tables and pairings: "a", "b", … */
  readonly id: string;
  readonly label: string;
  readonly upstream: BenchUpstream;
  readonly call: Call;
  /** Processes of their own the path runs through (a gateway), whose CPU per request is read from /proc. */
  readonly processes?: ReadonlyArray<{ readonly name: string; readonly pid: number }>;
  close(): Promise<void>;
}

/** "subject minus baseline": the overhead of one path over its direct counterpart. */
export interface Pairing {
  subject: string;
  baseline: string;
}
