/**
 * A form's fields are all text; the edit body schema types them. Each value
 * is read as the schema's type says, and only where it is exactly that
 * (`"2"` for an integer, `"true"` for a boolean, JSON text for an object or
 * array); anything else stays text, so the schema refuses it with a 400
 * naming the field rather than it being guessed at. The openai SDK sends
 * numbers and booleans as their text; objects and arrays go as JSON text.
 */
import type { ModelRegistry } from '../models/registry.js';

type Schema = { type?: string | readonly string[]; anyOf?: readonly Schema[] };

function types(schema: Schema | undefined): Set<string> {
  const out = new Set<string>();
  if (!schema) return out;
  for (const t of [schema.type ?? []].flat()) out.add(t);
  for (const branch of schema.anyOf ?? []) for (const t of types(branch)) out.add(t);
  return out;
}

function coerce(value: string, accepted: Set<string>): unknown {
  if ((accepted.has('integer') || accepted.has('number')) && /^-?\d+(\.\d+)?(e[+-]?\d+)?$/i.test(value)) return Number(value);
  if (accepted.has('boolean') && (value === 'true' || value === 'false')) return value === 'true';
  if ((accepted.has('object') || accepted.has('array')) && /^\s*[[{]/.test(value)) {
    try {
      return JSON.parse(value) as unknown;
    } catch {
      return value;
    }
  }
  return value;
}

/** The fields typed by the edit schema of the model they name (left as text when the model or its edits are unknown: the normalizer refuses them then). */
export function coerceFormFields(registry: ModelRegistry, fields: Record<string, string>): Record<string, unknown> {
  const model = typeof fields['model'] === 'string' ? registry.lookup(fields['model']) : undefined;
  const props = (model?.edits?.requestSchema.properties ?? {}) as Record<string, Schema>;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = Object.hasOwn(props, k) ? coerce(v, types(props[k])) : v;
  return out;
}
