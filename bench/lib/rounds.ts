import { runLoad, type LoadOptions } from './load.js';
import { readCpuMs } from './procfs.js';
import type { BenchPath, Pairing } from './paths.js';
import { median, summarize, type Summary } from './stats.js';

/**
 * Alternating rounds: for each concurrency, every path runs once per round in
 * a fixed order (a, b, a, b, …), so slow drift of a noisy machine (another
 * tenant, thermal limits, the GC of earlier rounds) lands on every path
 * alike. Figures are then medians over rounds, and overheads are taken per
 * round between neighbours before the median, not between two medians.
 */

export interface RoundPlan {
  concurrencies: number[];
  rounds: number;
  warmupMs: number;
  durationMs: number;
  maxRequests: number;
  requestTimeoutMs: number;
}

export interface RoundResult {
  path: string;
  concurrency: number;
  round: number;
  latency: Summary;
  throughput: number;
  cpuMsPerRequest: number;
  /** CPU per completed request of each of the path's own processes (BenchPath.processes), by name, ms. */
  processCpuMsPerRequest: Record<string, number>;
  eventLoopUtilization: number;
  /** From the upstream marking the job done to the client holding the full response. */
  completionToResponse: Summary;
  /** Upstream calls of each kind per job. */
  callsPerJob: Record<string, number>;
  errors: number;
  firstError: string | undefined;
}

export async function runRounds(
  paths: readonly BenchPath[],
  plan: RoundPlan,
  onRound?: (r: RoundResult) => void,
): Promise<RoundResult[]> {
  const results: RoundResult[] = [];
  for (const concurrency of plan.concurrencies) {
    for (let round = 0; round < plan.rounds; round++) {
      for (const path of paths) {
        const r = await runPathRound(path, concurrency, round, plan);
        results.push(r);
        onRound?.(r);
      }
    }
  }
  return results;
}

export async function runPathRound(path: BenchPath, concurrency: number, round: number, plan: Omit<RoundPlan, 'concurrencies' | 'rounds'>): Promise<RoundResult> {
  path.upstream.reset();
  const opts: LoadOptions = {
    concurrency,
    warmupMs: plan.warmupMs,
    durationMs: plan.durationMs,
    maxRequests: plan.maxRequests,
    requestTimeoutMs: plan.requestTimeoutMs,
  };
  const procs = path.processes ?? [];
  const cpu0: number[] = [];
  const cpu1: number[] = [];
  if (procs.length > 0) {
    opts.onWindow = {
      open: () => procs.forEach((p, i) => (cpu0[i] = readCpuMs(p.pid))),
      close: () => procs.forEach((p, i) => (cpu1[i] = readCpuMs(p.pid))),
    };
  }
  const load = await runLoad(path.call, opts);
  const processCpuMsPerRequest = Object.fromEntries(
    procs.map((p, i) => [p.name, load.completedInWindow > 0 ? (cpu1[i]! - cpu0[i]!) / load.completedInWindow : Number.NaN]),
  );
  // Joined after the round so the look-ups cost nothing inside the window.
  const c2r: number[] = [];
  for (const o of load.outcomes) {
    if (o.upstreamId === undefined) continue;
    const at = path.upstream.completedAtMs(o.upstreamId);
    if (at !== undefined) c2r.push(o.doneAtMs - at);
  }
  const { jobs, calls } = path.upstream.counters();
  const callsPerJob = Object.fromEntries(Object.entries(calls).map(([k, v]) => [k, jobs > 0 ? v / jobs : Number.NaN]));
  path.upstream.reset();
  return {
    path: path.id,
    concurrency,
    round,
    latency: summarize(load.latencyMs),
    throughput: load.throughput,
    cpuMsPerRequest: load.cpuMsPerRequest,
    processCpuMsPerRequest,
    eventLoopUtilization: load.eventLoopUtilization,
    completionToResponse: summarize(c2r),
    callsPerJob,
    errors: load.errors,
    firstError: load.firstError,
  };
}

export interface PathFigures {
  path: string;
  concurrency: number;
  rounds: number;
  p50: number;
  p99: number;
  throughput: number;
  cpuMsPerRequest: number;
  processCpuMsPerRequest: Record<string, number>;
  eventLoopUtilization: number;
  c2rP50: number;
  c2rP99: number;
  c2rMean: number;
  callsPerJob: Record<string, number>;
  errors: number;
  samples: number;
}

export interface PairFigures extends Pairing {
  concurrency: number;
  addedP50: number;
  addedP99: number;
  /** subject throughput / baseline throughput. */
  throughputRatio: number;
  addedCpuMsPerRequest: number;
}

export function pathFigures(results: readonly RoundResult[], path: string, concurrency: number): PathFigures {
  const rs = results.filter((r) => r.path === path && r.concurrency === concurrency);
  const kinds = new Set(rs.flatMap((r) => Object.keys(r.callsPerJob)));
  const procNames = new Set(rs.flatMap((r) => Object.keys(r.processCpuMsPerRequest)));
  return {
    path,
    concurrency,
    rounds: rs.length,
    p50: median(rs.map((r) => r.latency.p50)),
    p99: median(rs.map((r) => r.latency.p99)),
    throughput: median(rs.map((r) => r.throughput)),
    cpuMsPerRequest: median(rs.map((r) => r.cpuMsPerRequest)),
    processCpuMsPerRequest: Object.fromEntries([...procNames].map((k) => [k, median(rs.map((r) => r.processCpuMsPerRequest[k] ?? Number.NaN))])),
    eventLoopUtilization: median(rs.map((r) => r.eventLoopUtilization)),
    c2rP50: median(rs.map((r) => r.completionToResponse.p50)),
    c2rP99: median(rs.map((r) => r.completionToResponse.p99)),
    c2rMean: median(rs.map((r) => r.completionToResponse.mean)),
    callsPerJob: Object.fromEntries([...kinds].map((k) => [k, median(rs.map((r) => r.callsPerJob[k] ?? Number.NaN))])),
    errors: rs.reduce((s, r) => s + r.errors, 0),
    samples: rs.reduce((s, r) => s + r.latency.n, 0),
  };
}

export function pairFigures(results: readonly RoundResult[], pair: Pairing, concurrency: number): PairFigures {
  const at = (path: string) => new Map(results.filter((r) => r.path === path && r.concurrency === concurrency).map((r) => [r.round, r]));
  const subj = at(pair.subject);
  const base = at(pair.baseline);
  const d50: number[] = [];
  const d99: number[] = [];
  const ratio: number[] = [];
  const dcpu: number[] = [];
  for (const [round, s] of subj) {
    const b = base.get(round);
    if (!b) continue;
    d50.push(s.latency.p50 - b.latency.p50);
    d99.push(s.latency.p99 - b.latency.p99);
    ratio.push(s.throughput / b.throughput);
    dcpu.push(s.cpuMsPerRequest - b.cpuMsPerRequest);
  }
  return {
    ...pair,
    concurrency,
    addedP50: median(d50),
    addedP99: median(d99),
    throughputRatio: median(ratio),
    addedCpuMsPerRequest: median(dcpu),
  };
}
