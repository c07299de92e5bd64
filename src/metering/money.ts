/**
 * Exact money. Amounts are integer micro-dollars held in `bigint`; rates and
 * markups are exact rationals. Nothing here ever goes through a float, so a
 * charge computed twice, or in another process, is the same to the last
 * micro-dollar, and sums over millions of rows do not drift.
 */

export const MICROS_PER_USD = 1_000_000n;

/** Fits a signed 64-bit SQL BIGINT, which is where amounts end up. */
export const MAX_MICROS = 2n ** 63n - 1n;

/** An exact non-negative rational, always reduced, `den > 0`. */
export interface Ratio {
  readonly num: bigint;
  readonly den: bigint;
}

/** A value that is not an exact, acceptable amount; callers turn it into their own error (400, start-up failure). */
export class MoneyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MoneyError';
  }
}

const DECIMAL = /^([0-9]+)(?:\.([0-9]+))?$/;

function gcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
}

export function ratio(num: bigint, den = 1n): Ratio {
  if (den <= 0n) throw new RangeError('ratio: denominator must be positive');
  if (num < 0n) throw new RangeError('ratio: must not be negative');
  const g = gcd(num, den) || 1n;
  return { num: num / g, den: den / g };
}

export function addRatio(a: Ratio, b: Ratio): Ratio {
  return ratio(a.num * b.den + b.num * a.den, a.den * b.den);
}

export function mulRatio(a: Ratio, b: Ratio): Ratio {
  return ratio(a.num * b.num, a.den * b.den);
}

/** `ceil(a / b)` for non-negative `a` and positive `b`. */
export function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

/**
 * The decimal text of a JSON number: accepted only when its shortest
 * round-trip representation is plain decimal (`0.1`, not `1e-7`), which is
 * exactly the text the caller most likely wrote. Anything a float mangled
 * (`0.30000000000000004`) then fails the caller's decimal-places limit
 * instead of being rounded silently.
 */
function decimalText(value: string | number, what: string): string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new MoneyError(`${what} must be a finite number (got ${value})`);
    const text = String(value);
    if (/e/i.test(text)) throw new MoneyError(`${what} must be written as a plain decimal (got ${text})`);
    return text;
  }
  if (typeof value !== 'string') throw new MoneyError(`${what} must be a decimal string or a number`);
  return value;
}

/**
 * Parses a non-negative decimal (`"12"`, `"0.0085"`) exactly. Digits beyond
 * `maxDecimals` are refused unless they are all zeros (then nothing would be
 * lost).
 */
export function parseDecimal(value: string | number, maxDecimals: number, what = 'value'): Ratio {
  const text = decimalText(value, what);
  const m = DECIMAL.exec(text);
  if (!m) throw new MoneyError(`${what} must be a non-negative decimal such as "1.05" (got ${JSON.stringify(text)})`);
  const whole = m[1] ?? '0';
  const frac = (m[2] ?? '').replace(/0+$/, '');
  if (frac.length > maxDecimals) {
    throw new MoneyError(`${what} has more than ${maxDecimals} decimal places (got ${text}); it cannot be represented exactly`);
  }
  return ratio(BigInt(whole + frac), 10n ** BigInt(frac.length));
}

/** `"0.005"` or `0.005` → `5000n` micro-dollars. Refuses negatives, more than 6 decimals and amounts beyond a BIGINT. */
export function parseUsd(value: string | number): bigint {
  const r = parseDecimal(value, 6, 'a USD amount');
  const micros = (r.num * MICROS_PER_USD) / r.den;
  if (micros > MAX_MICROS) throw new MoneyError(`a USD amount must be at most ${formatUsd(MAX_MICROS)} (got ${String(value)})`);
  return micros;
}

/** `5250n` → `"0.005250"`: always six decimals, so the text is the exact amount and sorts and diffs cleanly. */
export function formatUsd(micros: bigint): string {
  const sign = micros < 0n ? '-' : '';
  const abs = micros < 0n ? -micros : micros;
  const whole = abs / MICROS_PER_USD;
  const frac = (abs % MICROS_PER_USD).toString().padStart(6, '0');
  return `${sign}${whole}.${frac}`;
}

/**
 * Renders a ratio as a decimal with at most `maxDecimals` places and no
 * trailing zeros (`3/4` → `"0.75"`, `2/1` → `"2"`). A value that needs more
 * places is rounded up, in keeping with never under-stating a quantity billed.
 */
export function formatDecimal(r: Ratio, maxDecimals = 12): string {
  const scale = 10n ** BigInt(maxDecimals);
  const scaled = ceilDiv(r.num * scale, r.den);
  const whole = scaled / scale;
  const frac = (scaled % scale).toString().padStart(maxDecimals, '0').replace(/0+$/, '');
  return frac === '' ? whole.toString() : `${whole}.${frac}`;
}

/** A price multiplier (`PRICE_MARKUP`), exact. */
export type Markup = Ratio;

/** Markups are multipliers with at most this many decimals ("1.333" is fine). */
const MARKUP_DECIMALS = 6;

/**
 * `PRICE_MARKUP`: `"1.05"` → 21/20. Must be greater than zero: a zero markup
 * would bill every request at $0.
 */
export function parseMarkup(value: string | number): Markup {
  const r = parseDecimal(value, MARKUP_DECIMALS, 'the price markup');
  if (r.num === 0n) throw new MoneyError('the price markup must be greater than 0 (a zero markup would bill $0)');
  return r;
}

/**
 * `micros × markup`, rounded UP to a whole micro-dollar: the rounding error
 * is below one micro-dollar per charge and always in the direction that
 * never bills less than the configured price.
 */
export function applyMarkup(micros: bigint, markup: Markup): bigint {
  if (micros < 0n) throw new RangeError('applyMarkup: amount must not be negative');
  return ceilDiv(micros * markup.num, markup.den);
}

/** A USD amount held as a ratio, rounded up to whole micro-dollars. */
export function ceilToMicros(usd: Ratio): bigint {
  return ceilDiv(usd.num * MICROS_PER_USD, usd.den);
}

const QUANTITY = /^([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
const MAX_EXPONENT = 1000;

/**
 * Canonical form for the unit quantities fal reports (`x-fal-billable-units`
 * may be fractional) and the ones we estimate. Stored canonical, SQL string
 * equality is numeric equality: "1", "1.0", "01" and "1e0" all become "1".
 */
export function canonicalDecimal(input: string | number | bigint): string {
  if (typeof input === 'bigint') return input.toString();
  if (typeof input === 'number' && !Number.isFinite(input)) throw new RangeError(`not a finite decimal: ${input}`);
  const text = String(input).trim();
  const m = QUANTITY.exec(text);
  const intPart = m?.[2] ?? '';
  const fracPart = m?.[3] ?? '';
  if (!m || intPart.length + fracPart.length === 0) throw new RangeError(`not a decimal: ${JSON.stringify(text)}`);
  const exponent = Number(m[4] ?? '0');
  if (Math.abs(exponent) > MAX_EXPONENT) throw new RangeError(`decimal exponent out of range: ${text}`);

  // value = digits × 10^-scale
  let digits = (intPart + fracPart).replace(/^0+/, '');
  let scale = fracPart.length - exponent;
  if (digits === '') return '0';
  while (scale > 0 && digits.endsWith('0')) {
    digits = digits.slice(0, -1);
    scale -= 1;
  }
  let out: string;
  if (scale <= 0) {
    out = digits + '0'.repeat(-scale);
  } else {
    const padded = digits.padStart(scale + 1, '0');
    out = `${padded.slice(0, padded.length - scale)}.${padded.slice(padded.length - scale)}`;
  }
  return m[1] === '-' ? `-${out}` : out;
}

export function decimalsEqual(a: string | number | bigint, b: string | number | bigint): boolean {
  return canonicalDecimal(a) === canonicalDecimal(b);
}
