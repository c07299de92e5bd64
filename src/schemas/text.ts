/**
 * Storable text: the rule every string a caller sends must meet, whatever
 * the field, so that what the database holds is what was sent, on SQLite
 * and PostgreSQL alike.
 *
 * Two kinds of JavaScript string cannot make that trip. U+0000: PostgreSQL
 * refuses it in a text value, so the write fails. An unpaired UTF-16
 * surrogate (U+D800 to U+DFFF alone): it has no UTF-8 form, and each driver
 * replaces it with U+FFFD its own way (one for pg, three for better-sqlite3),
 * so the stored text silently differs from the sent text and between the two
 * databases. Every other code point, noncharacters and controls included,
 * is stored exactly by both.
 *
 * The rule is the `storableText` keyword (registered on the one Ajv instance,
 * ./ajv.ts), added by `withStorableText` to every string of a schema that
 * validates caller input, so no field can be forgotten. The published JSON
 * Schemas stay plain draft-07; the rule is stated in their descriptions of
 * the API (openapi.yaml) instead.
 */

export const STORABLE_TEXT = 'storableText';

/** Found with the `u` flag, so a surrogate inside a valid pair is never matched. */
const UNSTORABLE = /[\u0000\ud800-\udfff]/u;

export interface UnstorableChar {
  /** Index of the offending UTF-16 code unit. */
  readonly index: number;
  /** `U+0000` or the lone surrogate as `U+D800`. */
  readonly codePoint: string;
}

/** The first character of `s` neither database can store as sent, or undefined when all can be. */
export function firstUnstorable(s: string): UnstorableChar | undefined {
  const m = UNSTORABLE.exec(s);
  if (!m) return undefined;
  const codePoint = `U+${m[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
  return { index: m.index, codePoint };
}

/** How a refused value is described in a 400, after the field's path. */
export function unstorableWords(c: UnstorableChar): string {
  const what = c.codePoint === 'U+0000' ? 'U+0000 (NUL)' : `an unpaired surrogate (${c.codePoint})`;
  return `contains ${what} at index ${c.index}; text cannot contain NUL characters or unpaired UTF-16 surrogates`;
}

function acceptsString(schema: Record<string, unknown>): boolean {
  const type = schema['type'];
  return type === 'string' || (Array.isArray(type) && type.includes('string'));
}

const SUBSCHEMA_MAPS = ['properties', 'patternProperties', 'definitions', '$defs'] as const;
const SUBSCHEMA_LISTS = ['anyOf', 'oneOf', 'allOf'] as const;
const SUBSCHEMAS = ['items', 'additionalProperties', 'not', 'if', 'then', 'else'] as const;

/**
 * A copy of `schema` in which every subschema that accepts a string also
 * requires `storableText`. Subschemas limited to `enum` or `const` values
 * need nothing (their values are ours) and are left as they are: a keyword
 * for strings there would change which error Ajv reports first when the
 * value is not a string at all, and the messages of `anyOf` fields rely on
 * that type error.
 */
export function withStorableText<S>(schema: S): S {
  if (Array.isArray(schema)) return schema.map((s: unknown) => withStorableText(s)) as S;
  if (typeof schema !== 'object' || schema === null) return schema;
  const src = schema as Record<string, unknown>;
  const out: Record<string, unknown> = { ...src };
  for (const key of SUBSCHEMA_MAPS) {
    const map = src[key];
    if (typeof map === 'object' && map !== null) {
      out[key] = Object.fromEntries(Object.entries(map).map(([k, s]) => [k, withStorableText(s)]));
    }
  }
  for (const key of [...SUBSCHEMA_LISTS, ...SUBSCHEMAS]) if (key in src) out[key] = withStorableText(src[key]);
  if (acceptsString(src) && !('enum' in src) && !('const' in src)) out[STORABLE_TEXT] = true;
  return out as S;
}
