/**
 * Exact non-negative decimals as (bigint coefficient, scale). Money and
 * billable units never touch floats: 0.0085 × 3 must print as 0.0255, and a
 * billing comparison test must be able to fail on the last digit.
 */

export interface Dec {
  readonly coef: bigint;
  readonly scale: number;
}

const DECIMAL_RE = /^(\d+)(?:\.(\d+))?$/;

export function isDecimalString(s: unknown): s is string {
  return typeof s === 'string' && DECIMAL_RE.test(s);
}

export function dec(s: string): Dec {
  const m = DECIMAL_RE.exec(s);
  if (!m) throw new Error(`not a non-negative decimal string: ${JSON.stringify(s)}`);
  const frac = m[2] ?? '';
  return { coef: BigInt(m[1]! + frac), scale: frac.length };
}

export function decInt(n: number | bigint): Dec {
  return { coef: BigInt(n), scale: 0 };
}

const pow10 = (n: number): bigint => 10n ** BigInt(n);

function align(a: Dec, b: Dec): [bigint, bigint, number] {
  const scale = Math.max(a.scale, b.scale);
  return [a.coef * pow10(scale - a.scale), b.coef * pow10(scale - b.scale), scale];
}

export function add(a: Dec, b: Dec): Dec {
  const [x, y, scale] = align(a, b);
  return { coef: x + y, scale };
}

export function mul(a: Dec, b: Dec): Dec {
  return { coef: a.coef * b.coef, scale: a.scale + b.scale };
}

export function isZero(a: Dec): boolean {
  return a.coef === 0n;
}

/**
 * num/den as a decimal. Exact whenever den has no prime factors besides 2
 * and 5 (2^20 pixels per megapixel, 10^6 pixels per megapixel); otherwise
 * rounded half-up at `maxScale` places.
 */
export function fraction(num: bigint, den: bigint, maxScale = 20): Dec {
  if (den <= 0n) throw new Error('fraction: denominator must be positive');
  for (let scale = 0; scale <= maxScale; scale++) {
    const scaled = num * pow10(scale);
    if (scaled % den === 0n) return { coef: scaled / den, scale };
  }
  const scaled = num * pow10(maxScale);
  return { coef: (scaled * 2n + den) / (2n * den), scale: maxScale };
}

export function ceil(a: Dec): Dec {
  const p = pow10(a.scale);
  const whole = a.coef / p;
  return { coef: a.coef % p === 0n ? whole : whole + 1n, scale: 0 };
}

/** Canonical form: no trailing fractional zeros, no exponent ("0.0255", "2", "0"). */
export function decToString(a: Dec): string {
  const digits = a.coef.toString().padStart(a.scale + 1, '0');
  if (a.scale === 0) return digits;
  const int = digits.slice(0, digits.length - a.scale);
  const frac = digits.slice(digits.length - a.scale).replace(/0+$/, '');
  return frac ? `${int}.${frac}` : int;
}
