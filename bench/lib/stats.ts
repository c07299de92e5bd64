/**
 * Percentiles and summaries. Kept free of any notion of paths or rounds so
 * every bench script can share them.
 */

/**
 * Linear interpolation between closest ranks (the "type 7" estimator that
 * numpy and most spreadsheets use), so p50 of two samples is their mean
 * rather than whichever one a rounding rule picks.
 */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  if (p <= 0) return sorted[0]!;
  if (p >= 100) return sorted[sorted.length - 1]!;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const w = rank - lo;
  return sorted[lo]! * (1 - w) + sorted[hi]! * w;
}

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].sort((x, y) => x - y);
  const sum = s.reduce((acc, v) => acc + v, 0);
  return {
    n: s.length,
    min: s.length ? s[0]! : Number.NaN,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s.length ? s[s.length - 1]! : Number.NaN,
    mean: s.length ? sum / s.length : Number.NaN,
  };
}

/** Median that ignores NaN (a round that produced no sample must not poison the rest). */
export function median(values: readonly number[]): number {
  const finite = values.filter((v) => Number.isFinite(v)).sort((x, y) => x - y);
  return percentile(finite, 50);
}
