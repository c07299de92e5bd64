/**
 * Conversions at the edge between driver values and domain values. Drivers
 * answer integers as bigint, number or (pg aggregates) decimal strings
 * depending on dialect and expression; these accept all three and refuse
 * anything that is not an exact integer, so a float never reaches the ledger.
 */

export function toBigInt(value: unknown): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError(`not an exact integer: ${value}`);
    return BigInt(value);
  }
  if (typeof value === 'string' && /^-?\d+$/.test(value)) return BigInt(value);
  throw new TypeError(`not an integer: ${String(value)}`);
}

export function toNullableBigInt(value: unknown): bigint | null {
  return value === null || value === undefined ? null : toBigInt(value);
}

/** For counts and sizes that are known to be small; refuses what a number cannot hold exactly. */
export function toNumber(value: unknown): number {
  const big = toBigInt(value);
  const n = Number(big);
  if (!Number.isSafeInteger(n)) throw new RangeError(`integer too large for a number: ${big}`);
  return n;
}

export function toNullableNumber(value: unknown): number | null {
  return value === null || value === undefined ? null : toNumber(value);
}

export type TimeInput = Date | string | number;

/**
 * The one timestamp format we store. Fixed-width ISO strings compare in time
 * order as plain strings on both dialects; any offset in the input is
 * normalised to UTC so `from`/`to` filters mean the same instant everywhere.
 */
export function toIsoTimestamp(value: TimeInput): string {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) throw new RangeError(`invalid timestamp: ${String(value)}`);
  const iso = date.toISOString();
  // Outside years 0000-9999 toISOString grows a sign and extra digits, which
  // would break lexicographic ordering.
  if (iso.length !== 24) throw new RangeError(`timestamp out of range: ${String(value)}`);
  return iso;
}

export type Clock = () => Date;
export const systemClock: Clock = () => new Date();
