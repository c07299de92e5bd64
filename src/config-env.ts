/**
 * Readers of one environment variable each, for src/config.ts. A reader never
 * throws: a bad value is recorded in `problems` and the default used, so the
 * whole environment is checked before anything is reported.
 */
import type { ModelPriceOverride, ModelPrices } from './models/prices.js';
import { PRICE_ROUNDINGS, PRICE_UNITS } from './metering/pricing.js';

export type Env = Record<string, string | undefined>;

export interface EnvReader {
  /** Every problem found so far, in the order found. */
  readonly problems: string[];
  /** The trimmed value; unset and blank both read as undefined. */
  str(name: string): string | undefined;
  int(name: string, def: number, min: number, max: number): number;
  /** A URL of one of `protocols`, without trailing slashes. */
  url(name: string, protocols: string[]): string | undefined;
  /** As `url`, for URLs that may carry a password: a bad value is never echoed. */
  secretUrl(name: string, protocols: string[]): string | undefined;
  bool(name: string, def: boolean): boolean;
  /** One of `choices`, compared as written; `def` when unset. */
  oneOf<T extends string>(name: string, choices: readonly T[], def: T): T;
}

export function createEnvReader(env: Env): EnvReader {
  const problems: string[] = [];
  const str = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  return {
    problems,
    str,
    int(name, def, min, max) {
      const raw = str(name);
      if (raw === undefined) return def;
      if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
        problems.push(`${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(raw)})`);
        return def;
      }
      return Number(raw);
    },
    url(name, protocols) {
      const raw = str(name);
      if (raw === undefined) return undefined;
      try {
        const u = new URL(raw);
        if (!protocols.includes(u.protocol)) throw new Error('protocol');
        return raw.replace(/\/+$/, '');
      } catch {
        problems.push(`${name} must be a ${protocols.join(' or ')} URL (got ${JSON.stringify(raw)})`);
        return undefined;
      }
    },
    secretUrl(name, protocols) {
      const raw = str(name);
      if (raw === undefined) return undefined;
      if (URL.canParse(raw) && protocols.includes(new URL(raw).protocol)) return raw;
      problems.push(`${name} must be a ${protocols.join(' or ')} URL (value not shown: it may hold a password)`);
      return undefined;
    },
    bool(name, def) {
      const raw = str(name)?.toLowerCase();
      if (raw === undefined) return def;
      if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
      if (['0', 'false', 'no', 'off'].includes(raw)) return false;
      problems.push(`${name} must be true or false (got ${JSON.stringify(raw)})`);
      return def;
    },
    oneOf(name, choices, def) {
      const raw = str(name) ?? def;
      if ((choices as readonly string[]).includes(raw)) return raw as (typeof choices)[number];
      problems.push(`${name} must be one of ${choices.join(', ')} (got ${JSON.stringify(raw)})`);
      return def;
    },
  };
}

const DECIMAL = /^\d+(\.\d+)?$/;
const PRICE_RULE_FIELDS = ['rateUsd', 'unit', 'megapixelPixels', 'rounding', 'promptExpansionUsd'];
const MODEL_PRICES_SHAPE =
  'MODEL_PRICES must be a JSON object {"<model id>": "<USD per unit>"} or {"<model id>": {"rateUsd", "unit", "megapixelPixels", "rounding", "promptExpansionUsd"}}';

/**
 * The shape and the decimals of `MODEL_PRICES`; whether each name is a model
 * and each price rule complete is decided where the catalog is known
 * (src/models/prices.ts), still before the service listens.
 */
export function parseModelPrices(raw: string | undefined, problems: string[]): ModelPrices {
  if (raw === undefined) return {};
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    problems.push(`${MODEL_PRICES_SHAPE} (it is not valid JSON)`);
    return {};
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    problems.push(MODEL_PRICES_SHAPE);
    return {};
  }
  const entries: Array<[string, ModelPriceOverride]> = [];
  for (const [model, value] of Object.entries(json as Record<string, unknown>)) {
    const rule = priceRule(`MODEL_PRICES[${JSON.stringify(model)}]`, value, problems);
    if (rule) entries.push([model, rule]);
  }
  // fromEntries defines own properties, so a "__proto__" key stays a (refused, unknown) model name rather than a prototype.
  return Object.freeze(Object.fromEntries(entries));
}

/** One model's entry of MODEL_PRICES: a decimal string (the rate) or a price rule's fields. */
function priceRule(where: string, value: unknown, problems: string[]): ModelPriceOverride | undefined {
  if (typeof value !== 'string' && (typeof value !== 'object' || value === null || Array.isArray(value))) {
    problems.push(`${where} must be a decimal string such as "0.01" or an object`);
    return undefined;
  }
  const rule: Record<string, unknown> = typeof value === 'string' ? { rateUsd: value } : (value as Record<string, unknown>);
  const unknown = Object.keys(rule).filter((k) => !PRICE_RULE_FIELDS.includes(k));
  if (unknown.length > 0) problems.push(`${where} has unknown fields: ${unknown.join(', ')}`);
  for (const k of ['rateUsd', 'promptExpansionUsd']) {
    // Decimal strings, never JSON numbers: 0.1 + 0.2 must not reach a bill.
    if (rule[k] !== undefined && (typeof rule[k] !== 'string' || !DECIMAL.test(rule[k] as string))) {
      problems.push(`${where}.${k} must be a decimal string such as "0.01" (got ${JSON.stringify(rule[k])})`);
    }
  }
  if (rule['unit'] !== undefined && !(PRICE_UNITS as readonly unknown[]).includes(rule['unit'])) problems.push(`${where}.unit must be one of ${PRICE_UNITS.join(', ')}`);
  if (rule['rounding'] !== undefined && !(PRICE_ROUNDINGS as readonly unknown[]).includes(rule['rounding'])) problems.push(`${where}.rounding must be one of ${PRICE_ROUNDINGS.join(', ')}`);
  const px = rule['megapixelPixels'];
  if (px !== undefined && !(typeof px === 'number' && Number.isSafeInteger(px) && px > 0)) problems.push(`${where}.megapixelPixels must be a positive integer`);
  return Object.freeze({ ...rule }) as ModelPriceOverride;
}
