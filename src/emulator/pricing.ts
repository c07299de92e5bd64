/**
 * The emulator's own price table. It is deliberately separate from the
 * gateway's model registry: the billing log is the "upstream invoice" the
 * gateway's ledger is checked against, and a check whose two sides read the
 * same table could never fail.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { add, ceil, dec, decInt, decToString, fraction, isDecimalString, mul, type Dec } from './decimal.js';

export type PriceUnit = 'megapixel' | 'image' | 'request';
export type PriceRounding = 'ceil_per_image' | 'ceil_per_request' | 'none';

export interface PriceEntry {
  unit: PriceUnit;
  /** Decimal string, USD per unit. */
  usd_per_unit: string;
  /** Pixels in one billed megapixel (unit "megapixel" only); default 1048576. */
  megapixel_pixels?: number;
  /** How megapixels are rounded (unit "megapixel" only); default "none". */
  rounding?: PriceRounding;
  /** Overrides the table-wide prompt expansion surcharge for this endpoint. */
  prompt_expansion_usd?: string;
  /**
   * Units an app error (4xx after the job reached a runner) bills when the
   * app set none: fal falls back to the endpoint's default units. Default "1".
   */
  error_units?: string;
}

export interface PriceTable {
  /** Surcharge per request with `enable_prompt_expansion: true`. */
  prompt_expansion_usd?: string;
  endpoints: Record<string, PriceEntry>;
}

export const DEFAULT_PRICES_FILE = fileURLToPath(new URL('./prices.json', import.meta.url));

export class PriceTableError extends Error {
  override name = 'PriceTableError';
}

/** Checks shape and decimal strings; returns a defensive copy. */
export function parsePriceTable(raw: unknown): PriceTable {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PriceTableError('price table must be an object');
  const o = raw as Record<string, unknown>;
  if (o.prompt_expansion_usd !== undefined && !isDecimalString(o.prompt_expansion_usd)) {
    throw new PriceTableError('prompt_expansion_usd must be a decimal string such as "0.0025"');
  }
  if (typeof o.endpoints !== 'object' || o.endpoints === null || Array.isArray(o.endpoints)) {
    throw new PriceTableError('price table needs an "endpoints" object');
  }
  const endpoints: Record<string, PriceEntry> = {};
  for (const [id, value] of Object.entries(o.endpoints as Record<string, unknown>)) {
    endpoints[id] = parseEntry(id, value);
  }
  const table: PriceTable = { endpoints };
  if (typeof o.prompt_expansion_usd === 'string') table.prompt_expansion_usd = o.prompt_expansion_usd;
  return table;
}

function parseEntry(id: string, raw: unknown): PriceEntry {
  const where = `endpoints[${JSON.stringify(id)}]`;
  if (typeof raw !== 'object' || raw === null) throw new PriceTableError(`${where} must be an object`);
  const e = raw as Record<string, unknown>;
  if (e.unit !== 'megapixel' && e.unit !== 'image' && e.unit !== 'request') {
    throw new PriceTableError(`${where}.unit must be "megapixel", "image" or "request"`);
  }
  if (!isDecimalString(e.usd_per_unit)) throw new PriceTableError(`${where}.usd_per_unit must be a decimal string`);
  const entry: PriceEntry = { unit: e.unit, usd_per_unit: e.usd_per_unit };
  if (e.megapixel_pixels !== undefined) {
    if (typeof e.megapixel_pixels !== 'number' || !Number.isSafeInteger(e.megapixel_pixels) || e.megapixel_pixels <= 0) {
      throw new PriceTableError(`${where}.megapixel_pixels must be a positive integer`);
    }
    entry.megapixel_pixels = e.megapixel_pixels;
  }
  if (e.rounding !== undefined) {
    if (e.rounding !== 'ceil_per_image' && e.rounding !== 'ceil_per_request' && e.rounding !== 'none') {
      throw new PriceTableError(`${where}.rounding must be "ceil_per_image", "ceil_per_request" or "none"`);
    }
    entry.rounding = e.rounding;
  }
  if (e.prompt_expansion_usd !== undefined) {
    if (!isDecimalString(e.prompt_expansion_usd)) throw new PriceTableError(`${where}.prompt_expansion_usd must be a decimal string`);
    entry.prompt_expansion_usd = e.prompt_expansion_usd;
  }
  if (e.error_units !== undefined) {
    if (!isDecimalString(e.error_units)) throw new PriceTableError(`${where}.error_units must be a decimal string`);
    entry.error_units = e.error_units;
  }
  return entry;
}

export function loadPriceTable(file: string): PriceTable {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PriceTableError(`cannot read price table ${file}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PriceTableError(`price table ${file} is not JSON: ${(err as Error).message}`);
  }
  return parsePriceTable(json);
}

/** Endpoint ids the table cannot price; a served endpoint without a price must fail loudly. */
export function missingPrices(table: PriceTable, priceKeys: Iterable<string>): string[] {
  const out: string[] = [];
  for (const key of priceKeys) if (!table.endpoints[key]) out.push(key);
  return out;
}

export interface Charge {
  unit: PriceUnit;
  /** Billable quantity in `unit`, canonical decimal string (what `x-fal-billable-units` carries). */
  units: string;
  /** Total USD including any prompt expansion surcharge, canonical decimal string. */
  usd: string;
  prompt_expansion_usd: string;
}

export interface ChargeInput {
  images: ReadonlyArray<{ width: number; height: number }>;
  promptExpansion: boolean;
}

export function priceJob(table: PriceTable, priceKey: string, job: ChargeInput): Charge {
  const entry = table.endpoints[priceKey];
  if (!entry) throw new PriceTableError(`no price for ${priceKey}`);
  let units: Dec;
  if (entry.unit === 'request') {
    units = decInt(1);
  } else if (entry.unit === 'image') {
    units = decInt(job.images.length);
  } else {
    const mp = BigInt(entry.megapixel_pixels ?? 1048576);
    const rounding = entry.rounding ?? 'none';
    if (rounding === 'ceil_per_image') {
      units = decInt(0);
      for (const im of job.images) units = add(units, ceil(fraction(BigInt(im.width * im.height), mp)));
    } else {
      let pixels = 0n;
      for (const im of job.images) pixels += BigInt(im.width * im.height);
      units = fraction(pixels, mp);
      if (rounding === 'ceil_per_request') units = ceil(units);
    }
  }
  const expansion = job.promptExpansion
    ? dec(entry.prompt_expansion_usd ?? table.prompt_expansion_usd ?? '0')
    : decInt(0);
  const usd = add(mul(units, dec(entry.usd_per_unit)), expansion);
  return { unit: entry.unit, units: decToString(units), usd: decToString(usd), prompt_expansion_usd: decToString(expansion) };
}

/** What a failed job bills: `units` (default the row's error_units, else 1) at the row's rate, no surcharge. */
export function priceFailure(table: PriceTable, priceKey: string, units?: string): Charge {
  const entry = table.endpoints[priceKey];
  if (!entry) throw new PriceTableError(`no price for ${priceKey}`);
  const u = dec(units ?? entry.error_units ?? '1');
  return { unit: entry.unit, units: decToString(u), usd: decToString(mul(u, dec(entry.usd_per_unit))), prompt_expansion_usd: '0' };
}

/** Sum of canonical decimal strings, as a canonical decimal string. */
export function sumUsd(values: Iterable<string>): string {
  let total = decInt(0);
  for (const v of values) total = add(total, dec(v));
  return decToString(total);
}
