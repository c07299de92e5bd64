/**
 * A small interpreter for the endpoint input rules in `endpoints.ts`,
 * answering the way fal's FastAPI/pydantic apps do: every problem at once, as
 * `{loc:["body",field,...], msg, type, ctx?}`. It applies defaults, ignores
 * unknown fields (pydantic's default) and never clamps a value.
 */

export type Rule = StringRule | IntegerRule | NumberRule | BooleanRule | ImageSizeRule | ArrayRule | ObjectRule;

export interface StringRule {
  type: 'string';
  enum?: readonly string[];
  default?: string;
}
export interface IntegerRule {
  type: 'integer';
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  default?: number;
}
export interface NumberRule {
  type: 'number';
  minimum?: number;
  maximum?: number;
  default?: number;
}
export interface BooleanRule {
  type: 'boolean';
  default?: boolean;
}
/** fal's `ImageSize | preset` union. */
export interface ImageSizeRule {
  type: 'image_size';
  presets: readonly string[];
  default: string;
  /** Bounds for explicit width/height. */
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  /** Bound on width × height of an explicit size, where the endpoint publishes one (a megapixel limit). */
  maxPixels?: number;
}
export interface ArrayRule {
  type: 'array';
  items: Rule;
  maxItems?: number;
  minItems?: number;
}
export interface ObjectRule {
  type: 'object';
  properties: Record<string, Rule>;
  required?: readonly string[];
}

export interface FieldError {
  loc: (string | number)[];
  msg: string;
  type: string;
  ctx?: Record<string, unknown>;
}

type Loc = (string | number)[];

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function checkBounds(
  value: number,
  rule: { minimum?: number; maximum?: number; exclusiveMinimum?: number },
  loc: Loc,
  errors: FieldError[],
): void {
  if (rule.exclusiveMinimum !== undefined && !(value > rule.exclusiveMinimum)) {
    errors.push({
      loc,
      msg: `ensure this value is greater than ${rule.exclusiveMinimum}`,
      type: 'value_error.number.not_gt',
      ctx: { limit_value: rule.exclusiveMinimum },
    });
  }
  if (rule.minimum !== undefined && value < rule.minimum) {
    errors.push({
      loc,
      msg: `ensure this value is greater than or equal to ${rule.minimum}`,
      type: 'value_error.number.not_ge',
      ctx: { limit_value: rule.minimum },
    });
  }
  if (rule.maximum !== undefined && value > rule.maximum) {
    errors.push({
      loc,
      msg: `ensure this value is less than or equal to ${rule.maximum}`,
      type: 'value_error.number.not_le',
      ctx: { limit_value: rule.maximum },
    });
  }
}

function validateValue(rule: Rule, value: unknown, loc: Loc, errors: FieldError[]): unknown {
  switch (rule.type) {
    case 'string':
      if (typeof value !== 'string') {
        errors.push({ loc, msg: 'str type expected', type: 'type_error.str' });
        return undefined;
      }
      if (rule.enum && !rule.enum.includes(value)) {
        errors.push({
          loc,
          msg: `unexpected value; permitted: ${rule.enum.map((e) => `'${e}'`).join(', ')}`,
          type: 'value_error.const',
          ctx: { given: value, permitted: [...rule.enum] },
        });
      }
      return value;
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        errors.push({ loc, msg: 'value is not a valid integer', type: 'type_error.integer' });
        return undefined;
      }
      checkBounds(value, rule, loc, errors);
      return value;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        errors.push({ loc, msg: 'value is not a valid float', type: 'type_error.float' });
        return undefined;
      }
      checkBounds(value, rule, loc, errors);
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') {
        errors.push({ loc, msg: 'value could not be parsed to a boolean', type: 'type_error.bool' });
        return undefined;
      }
      return value;
    case 'image_size':
      return validateImageSize(rule, value, loc, errors);
    case 'array':
      return validateArray(rule, value, loc, errors);
    case 'object':
      return validateObject(rule, value, loc, errors);
  }
}

function validateImageSize(rule: Extract<Rule, { type: 'image_size' }>, value: unknown, loc: Loc, errors: FieldError[]): unknown {
  if (typeof value === 'string') {
    if (!rule.presets.includes(value)) {
      errors.push({
        loc,
        msg: `unexpected value; permitted: ${rule.presets.map((e) => `'${e}'`).join(', ')}`,
        type: 'value_error.const',
        ctx: { given: value, permitted: [...rule.presets] },
      });
    }
    return value;
  }
  const dim: IntegerRule = { type: 'integer', default: 512 };
  if (rule.minimum !== undefined) dim.minimum = rule.minimum;
  if (rule.maximum !== undefined) dim.maximum = rule.maximum;
  if (rule.exclusiveMinimum !== undefined) dim.exclusiveMinimum = rule.exclusiveMinimum;
  const before = errors.length;
  const size = validateValue({ type: 'object', properties: { width: dim, height: dim } }, value, loc, errors) as { width: number; height: number } | undefined;
  if (errors.length === before && size && rule.maxPixels !== undefined && size.width * size.height > rule.maxPixels) {
    errors.push({
      loc,
      msg: `ensure width × height is less than or equal to ${rule.maxPixels} pixels`,
      type: 'value_error.number.not_le',
      ctx: { limit_value: rule.maxPixels },
    });
  }
  return size;
}

/** The largest image (width × height) a size rule lets through. */
export function largestImage(rule: ImageSizeRule, presetPixels: number): number {
  const side = rule.maximum ?? Infinity;
  return Math.max(presetPixels, Math.min(rule.maxPixels ?? Infinity, side * side));
}

function validateArray(rule: Extract<Rule, { type: 'array' }>, value: unknown, loc: Loc, errors: FieldError[]): unknown {
  if (!Array.isArray(value)) {
    errors.push({ loc, msg: 'value is not a valid list', type: 'type_error.list' });
    return undefined;
  }
  if (rule.maxItems !== undefined && value.length > rule.maxItems) {
    errors.push({
      loc,
      msg: `ensure this value has at most ${rule.maxItems} items`,
      type: 'value_error.list.max_items',
      ctx: { limit_value: rule.maxItems },
    });
  }
  if (rule.minItems !== undefined && value.length < rule.minItems) {
    errors.push({
      loc,
      msg: `ensure this value has at least ${rule.minItems} items`,
      type: 'value_error.list.min_items',
      ctx: { limit_value: rule.minItems },
    });
  }
  return value.map((item, i) => validateValue(rule.items, item, [...loc, i], errors));
}

function validateObject(rule: Extract<Rule, { type: 'object' }>, value: unknown, loc: Loc, errors: FieldError[]): unknown {
  if (!isPlainObject(value)) {
    errors.push({ loc, msg: 'value is not a valid dict', type: 'type_error.dict' });
    return undefined;
  }
  const out: Record<string, unknown> = {};
  for (const [name, sub] of Object.entries(rule.properties)) {
    const v = value[name];
    // pydantic treats an explicit null on an optional field as "not given".
    if (v === undefined || v === null) {
      if (rule.required?.includes(name)) {
        errors.push({ loc: [...loc, name], msg: 'field required', type: 'value_error.missing' });
      } else if ('default' in sub && sub.default !== undefined) {
        out[name] = sub.default;
      }
      continue;
    }
    out[name] = validateValue(sub, v, [...loc, name], errors);
  }
  return out;
}

/** Validates a request body; `value` holds the input with defaults applied. */
export function validateInput(
  rule: ObjectRule,
  body: unknown,
): { ok: true; value: Record<string, unknown> } | { ok: false; errors: FieldError[] } {
  const errors: FieldError[] = [];
  const value = validateValue(rule, body, ['body'], errors);
  if (errors.length > 0) return { ok: false, errors };
  return { ok: true, value: value as Record<string, unknown> };
}
