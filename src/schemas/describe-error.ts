/**
 * Turns Ajv's first validation failure into a sentence a caller can act on:
 * the exact path inside the body (`loras[0].path`, `image_size.width`), the
 * limit that was broken and the value that broke it, plus the top-level
 * field to report as the error's `param`.
 */
import type { ErrorObject } from 'ajv';
import { PATTERN_HINTS, UNSUPPORTED_VALUE_REASONS } from './fields.js';

export interface ValidationFailure {
  /** The top-level field the caller sent that holds the bad value; null for the body itself. */
  readonly param: string | null;
  /** Path of the bad value, e.g. `loras[0].path`; empty for the body itself. */
  readonly path: string;
  /** The Ajv keyword that failed, e.g. `maximum`. */
  readonly keyword: string;
  readonly message: string;
}

export interface DescribeOptions {
  /** Named in messages about values a model cannot honour. */
  readonly modelId?: string;
}

/** How to call the items of an array field in a "too many" message. */
const ITEM_NOUNS: Readonly<Record<string, string>> = { loras: 'LoRAs' };

const SHOW_MAX = 80;

/** A value as the caller would recognise it, shortened so a huge or hostile value cannot flood the message. */
export function showValue(v: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    // Nested deeper than the stack: String() of an array recurses just the same, so name the kind only.
    text = Array.isArray(v) ? '[...]' : typeof v === 'object' && v !== null ? '{...}' : String(v);
  }
  return text.length > SHOW_MAX ? `${text.slice(0, SHOW_MAX - 3)}...` : text;
}

function segmentsOf(instancePath: string): string[] {
  if (instancePath === '') return [];
  return instancePath
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function joinPath(segments: readonly string[]): string {
  let out = '';
  for (const s of segments) {
    if (/^(?:0|[1-9][0-9]*)$/.test(s)) out += `[${s}]`;
    else out += out === '' ? s : `.${s}`;
  }
  return out;
}

function typeWords(type: unknown): string {
  const one = (t: string) =>
    ({ integer: 'an integer', number: 'a number', string: 'a string', boolean: 'a boolean', object: 'an object', array: 'an array', null: 'null' })[t] ?? t;
  const types = Array.isArray(type) ? type : String(type).split(',');
  return types.map((t) => one(String(t))).join(' or ');
}

function listValues(values: readonly unknown[]): string {
  const shown = values.map((v) => showValue(v));
  return shown.length <= 1 ? (shown[0] ?? '') : `${shown.slice(0, -1).join(', ')} or ${shown[shown.length - 1]}`;
}

function branchWords(branch: unknown): string {
  if (typeof branch !== 'object' || branch === null) return 'something else';
  const b = branch as Record<string, unknown>;
  // Commas only: the alternatives themselves are joined with "or".
  if (Array.isArray(b['enum'])) return `one of ${b['enum'].map((v) => showValue(v)).join(', ')}`;
  if (b['type'] === 'object' && typeof b['properties'] === 'object' && b['properties'] !== null) {
    return `an object {${Object.keys(b['properties']).join(', ')}}`;
  }
  return typeWords(b['type']);
}

/**
 * Ajv reports every branch's errors before an `anyOf` failure. The branch
 * the caller meant is the one whose type matched; report that branch's
 * error. When no branch's type matched, describe the alternatives.
 */
function pick(errors: readonly ErrorObject[]): ErrorObject | undefined {
  const last = errors[errors.length - 1];
  if (!last || (last.keyword !== 'anyOf' && last.keyword !== 'oneOf')) return errors[0];
  const prefix = `${last.schemaPath}/`;
  const branches = new Map<string, ErrorObject[]>();
  for (const e of errors.slice(0, -1)) {
    if (!e.schemaPath.startsWith(prefix)) continue;
    const index = e.schemaPath.slice(prefix.length).split('/')[0] ?? '';
    const list = branches.get(index) ?? [];
    list.push(e);
    branches.set(index, list);
  }
  for (const list of branches.values()) {
    const typeMismatch = list.some((e) => e.keyword === 'type' && e.instancePath === last.instancePath);
    if (!typeMismatch) return pick(list);
  }
  return last;
}

function describeOne(e: ErrorObject, opts: DescribeOptions): ValidationFailure {
  const segments = segmentsOf(e.instancePath);
  const path = joinPath(segments);
  const params = e.params as Record<string, unknown>;
  const got = `(got ${showValue(e.data)})`;
  const at = (message: string): ValidationFailure => ({ param: segments[0] ?? null, path, keyword: e.keyword, message });

  switch (e.keyword) {
    case 'required': {
      const missing = String(params['missingProperty']);
      if (path === '') return { param: missing, path: missing, keyword: e.keyword, message: `Missing required parameter: '${missing}'.` };
      return at(`${path}.${missing} is required`);
    }
    case 'additionalProperties': {
      const extra = String(params['additionalProperty']);
      if (path === '') return { param: extra, path: extra, keyword: e.keyword, message: `Unrecognized request argument supplied: ${extra}` };
      const props = (e.parentSchema as { properties?: object } | undefined)?.properties;
      const allowed = props ? ` (allowed: ${Object.keys(props).join(', ')})` : '';
      return at(`${path}: unrecognized field ${showValue(extra)}${allowed}`);
    }
    case 'type':
      return at(`${path} must be ${typeWords(params['type'])} ${got}`);
    case 'minimum':
      return at(`${path} must be at least ${String(params['limit'])} ${got}`);
    case 'maximum':
      return at(`${path} must be at most ${String(params['limit'])} ${got}`);
    case 'exclusiveMinimum':
      return at(`${path} must be greater than ${String(params['limit'])} ${got}`);
    case 'exclusiveMaximum':
      return at(`${path} must be less than ${String(params['limit'])} ${got}`);
    case 'multipleOf':
      return at(`${path} must be a multiple of ${String(params['multipleOf'])} ${got}`);
    case 'minLength': {
      const limit = Number(params['limit']);
      return at(limit === 1 ? `${path} must not be empty` : `${path} must be at least ${limit} characters long (got ${[...String(e.data)].length})`);
    }
    case 'maxLength':
      return at(`${path} must be at most ${String(params['limit'])} characters long (got ${[...String(e.data)].length})`);
    case 'pattern': {
      const hint = PATTERN_HINTS[String(params['pattern'])] ?? `must match the pattern /${String(params['pattern'])}/`;
      return at(`${path} ${hint} ${got}`);
    }
    case 'maxItems': {
      const limit = Number(params['limit']);
      const noun = ITEM_NOUNS[segments[segments.length - 1] ?? ''] ?? 'items';
      const count = Array.isArray(e.data) ? e.data.length : '?';
      return at(`${path}[${limit}]: at most ${limit} ${noun} are allowed (got ${count})`);
    }
    case 'minItems':
      return at(`${path} must have at least ${String(params['limit'])} items`);
    case 'enum':
    case 'const': {
      const allowed = e.keyword === 'enum' ? (params['allowedValues'] as unknown[]) : [params['allowedValue']];
      const reason = segments.length === 1 ? UNSUPPORTED_VALUE_REASONS[segments[0] ?? ''] : undefined;
      if (reason !== undefined) {
        const by = opts.modelId ? ` by ${opts.modelId}` : '';
        return at(`${path} ${showValue(e.data)} is not supported${by}: ${reason}. Accepted: ${listValues(allowed)}`);
      }
      return at(`${path} must be one of ${listValues(allowed)} ${got}`);
    }
    case 'anyOf':
    case 'oneOf': {
      const branches = Array.isArray(e.schema) ? e.schema : [];
      return at(`${path} must be ${branches.map(branchWords).join(' or ')} ${got}`);
    }
    default:
      // Our own keywords (storableText, ajv.ts) word their failure in the message.
      return at(`${path} ${e.message ?? `fails ${e.keyword}`} ${got}`);
  }
}

/** Describes the failure Ajv reported (compile validators with `verbose: true` for the richest messages). */
export function describeValidationErrors(errors: readonly ErrorObject[] | null | undefined, opts: DescribeOptions = {}): ValidationFailure {
  const e = pick(errors ?? []);
  if (!e) return { param: null, path: '', keyword: 'unknown', message: 'The request body is invalid.' };
  return describeOne(e, opts);
}
