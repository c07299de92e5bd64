/**
 * The model registry: one declarative entry per public model, checked in
 * full when the registry is built so that a bad entry (above all a missing
 * or broken price) stops start-up instead of being served and billed $0.
 * Lookup is exact, by id or a declared alias: no prefixes, no substrings,
 * no case folding, so a name can never route to a model it does not name.
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import { compileInput } from '../schemas/ajv.js';
import { validatePricing, type ModelPricing, type PriceRounding } from '../metering/pricing.js';
import { IMAGE_SIZE_PRESET_PIXELS, PINNED_FIELDS } from '../schemas/fields.js';
import type { ImageSizeValue, OutputFormat } from '../schemas/image-request.js';
import { capabilitiesOf, editVariant } from './edits.js';
import { checkBody, falInputOf, ignoredHints, imageSizeOf, pixelsOf } from './request-fields.js';
import type { ModelRegistry } from '../images/ports.js';

export type { ModelRegistry } from '../images/ports.js';
export { PINNED_FIELDS } from '../schemas/fields.js';

export { defaultModels, modelCatalog } from './catalog.js';

/** A request body schema as the registry needs it: a closed object with `model` and `prompt`. */
export interface RequestSchema {
  readonly type: 'object';
  readonly properties: { readonly [field: string]: object };
  readonly required: readonly string[];
  readonly additionalProperties: false;
}

/**
 * fal's own defaults for the endpoint. The fields that decide the price
 * (`PINNED_FIELDS`) are always sent to fal explicitly from here, so a change
 * of fal's defaults cannot make an image cost something other than what we
 * bill; the rest document what fal does when the caller says nothing.
 */
export type ModelDefaults = {
  /** `auto` (an edit's default): the input image's size. */
  readonly image_size: ImageSizeValue | 'auto';
  readonly num_images: number;
  readonly output_format: OutputFormat;
  readonly enable_safety_checker: boolean;
  readonly enable_prompt_expansion?: boolean;
} & { readonly [field: string]: unknown };

export interface ModelEntry {
  /** The public model name, e.g. `alibaba/z-image-turbo`. */
  readonly id: string;
  /** Other exact names that select this model. */
  readonly aliases: readonly string[];
  /** fal endpoint id, e.g. `fal-ai/z-image/turbo`. */
  readonly endpoint: string;
  readonly ownedBy: string;
  /** Unix seconds, for `GET /v1/models`. */
  readonly created: number;
  readonly description: string;
  readonly requestSchema: RequestSchema;
  /** The most images one fal job makes (fal's `num_images` maximum). */
  readonly maxImagesPerJob: number;
  /**
   * The most images one request may ask for (OpenAI's `n`). Above
   * `maxImagesPerJob` the request is split into several fal jobs.
   */
  readonly maxImagesPerRequest: number;
  readonly defaults: ModelDefaults;
  readonly pricing: ModelPricing;
  /** Image edits, when fal serves the model with an input image. */
  readonly edits?: ModelEdits;
}

/** One fal endpoint an edit goes to, with its own price (fal prices each endpoint). */
export interface EditEndpoint<P = ModelPricing> {
  /** fal endpoint id, e.g. `fal-ai/z-image/turbo/image-to-image`. */
  readonly endpoint: string;
  readonly pricing: P;
  /** fal's page the fields, defaults and price were read from. */
  readonly source: string;
}

/**
 * What an edit of this model takes and where it goes: no mask →
 * `imageToImage`; a mask → `inpaint`, when fal has one for the model.
 */
export interface ModelEdits<P = ModelPricing> {
  /** The body of an edit (src/schemas/edit-request.ts): the generation fields, `image_size` with `auto`, `image_url`, `mask_url`, `strength`. */
  readonly requestSchema: RequestSchema;
  /** The largest output side: what a URL input with `size` auto is reserved at (its size is unknown until fal answers). */
  readonly maxSide: number;
  readonly imageToImage: EditEndpoint<P>;
  readonly inpaint?: EditEndpoint<P>;
}

/** What a request asks of a model: generate from text, edit an image, or repaint a masked part of it. */
export type EditKind = 'image_to_image' | 'inpaint';
export type Capability = 'generations' | 'edits' | 'inpaint';

/**
 * A price rule whose unit and rounding are known but whose rate no public
 * source confirms. A model declared with one is served only once
 * configuration (`MODEL_PRICES`) supplies the rate; until then it is left out
 * of the registry, never billed at $0.
 */
export interface UnconfirmedPricing {
  readonly unit: ModelPricing['unit'];
  readonly rateUsd: null;
  readonly megapixelPixels?: number;
  readonly rounding?: PriceRounding;
  readonly promptExpansionUsd?: string;
  /** Why the rate is unconfirmed; logged when the model is left out. */
  readonly unconfirmed: string;
}

/** A catalog entry: a `ModelEntry` whose prices (the model's, or its inpaint endpoint's) may still await configuration. */
export interface ModelDefinition extends Omit<ModelEntry, 'pricing' | 'edits'> {
  readonly pricing: ModelPricing | UnconfirmedPricing;
  readonly edits?: ModelEdits<ModelPricing | UnconfirmedPricing>;
}


/** The registry as built: the port, and the validators it compiled for each entry. */
export interface CompiledModelRegistry extends ModelRegistry {
  /** The validators compiled for `model` when the registry was built. */
  validators(model: ModelEntry): ModelValidators;
}

export interface ModelValidators {
  /** The whole request body against the model's schema. */
  readonly body: ValidateFunction;
  /** The model's `image_size` field alone, for checking OpenAI's `size` against the same limits. */
  readonly imageSize: ValidateFunction | undefined;
}

const ENDPOINT_ID = /^[a-z0-9-]+\/[a-z0-9._-]+(?:\/[a-z0-9._-]+)*$/;
const MODEL_NAME = /^[\x21-\x7e]{1,200}$/;
const FORBIDDEN_FIELD_NAMES = new Set(['__proto__', 'constructor', 'prototype']);

function fail(where: string, problem: string): never {
  throw new Error(`Model registry: ${where}: ${problem}`);
}

function ajvErrorsText(errors: ErrorObject[] | null | undefined): string {
  return (errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? e.keyword}`).join('; ');
}

function isPositiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

function checkEntryShape(e: ModelEntry, where: string): void {
  if (typeof e !== 'object' || e === null) fail(where, 'entry must be an object');
  if (typeof e.id !== 'string' || !MODEL_NAME.test(e.id)) fail(where, `id must be a non-empty name without spaces (got ${JSON.stringify(e.id)})`);
  if (!Array.isArray(e.aliases)) fail(where, 'aliases must be an array (empty when there are none)');
  for (const a of e.aliases) {
    if (typeof a !== 'string' || !MODEL_NAME.test(a)) fail(where, `alias ${JSON.stringify(a)} must be a non-empty name without spaces`);
  }
  if (typeof e.endpoint !== 'string' || !ENDPOINT_ID.test(e.endpoint)) fail(where, `endpoint must be a fal endpoint id like "fal-ai/z-image/turbo" (got ${JSON.stringify(e.endpoint)})`);
  if (typeof e.ownedBy !== 'string' || e.ownedBy === '') fail(where, 'ownedBy is missing');
  if (!isPositiveInt(e.created)) fail(where, `created must be unix seconds (got ${JSON.stringify(e.created)})`);
  if (typeof e.description !== 'string' || e.description === '') fail(where, 'description is missing');
  if (!isPositiveInt(e.maxImagesPerJob)) fail(where, `maxImagesPerJob must be a positive integer (got ${JSON.stringify(e.maxImagesPerJob)})`);
  if (!isPositiveInt(e.maxImagesPerRequest) || e.maxImagesPerRequest < e.maxImagesPerJob) {
    fail(where, `maxImagesPerRequest must be an integer ≥ maxImagesPerJob (got ${JSON.stringify(e.maxImagesPerRequest)})`);
  }
}

function checkSchema(e: ModelEntry, where: string): void {
  const s = e.requestSchema as unknown as Record<string, unknown> | undefined;
  if (typeof s !== 'object' || s === null) fail(where, 'requestSchema is missing');
  const props = s['properties'];
  if (s['type'] !== 'object' || typeof props !== 'object' || props === null) fail(where, 'requestSchema must be an object schema with properties');
  // A closed schema is what lets unknown fields be refused instead of forwarded to fal.
  if (s['additionalProperties'] !== false) fail(where, 'requestSchema must set additionalProperties: false');
  const required = s['required'];
  for (const field of ['model', 'prompt']) {
    if (!Object.hasOwn(props, field)) fail(where, `requestSchema must define "${field}"`);
    if (!Array.isArray(required) || !required.includes(field)) fail(where, `requestSchema must require "${field}"`);
  }
  for (const field of Object.keys(props)) {
    if (FORBIDDEN_FIELD_NAMES.has(field)) fail(where, `requestSchema must not define a field named "${field}"`);
  }
  const has = (f: string) => Object.hasOwn(props, f);
  // The OpenAI names are mapped onto the fal names, so they can only exist together.
  if (has('n') && !has('num_images')) fail(where, 'requestSchema defines "n" without "num_images"');
  if (has('size') && !has('image_size')) fail(where, 'requestSchema defines "size" without "image_size"');
  // Pricing needs pixels: every preset a schema offers must be in the preset table.
  const imageSize = has('image_size') ? (props as Record<string, { anyOf?: unknown; enum?: unknown }>)['image_size'] : undefined;
  const branches = Array.isArray(imageSize?.anyOf) ? (imageSize.anyOf as Array<{ enum?: unknown }>) : imageSize ? [imageSize] : [];
  for (const branch of branches) {
    for (const preset of Array.isArray(branch.enum) ? branch.enum : []) {
      if (!Object.hasOwn(IMAGE_SIZE_PRESET_PIXELS, String(preset))) fail(where, `image_size preset ${JSON.stringify(preset)} has no pixel size in IMAGE_SIZE_PRESET_PIXELS`);
    }
  }
  // aimlapi's num_images is one job's worth; OpenAI's n may fan out.
  for (const [f, limit, name] of [['num_images', e.maxImagesPerJob, 'maxImagesPerJob'], ['n', e.maxImagesPerRequest, 'maxImagesPerRequest']] as const) {
    const max = has(f) ? (props as Record<string, { maximum?: unknown }>)[f]?.maximum : undefined;
    if (has(f) && max !== limit) fail(where, `requestSchema "${f}" maximum (${String(max)}) must equal ${name} (${limit})`);
  }
}

function checkDefaults(e: ModelEntry, where: string, body: ValidateFunction): void {
  const d = e.defaults as unknown;
  if (typeof d !== 'object' || d === null) fail(where, 'defaults are missing');
  for (const f of PINNED_FIELDS) {
    if (Object.hasOwn(e.requestSchema.properties, f) && (d as Record<string, unknown>)[f] === undefined) {
      fail(where, `defaults.${f} is missing; it decides the price, so it is always sent to fal explicitly`);
    }
  }
  const probe = { ...(d as object), model: e.id, prompt: 'registry self-check' };
  if (!body(probe)) fail(where, `defaults do not satisfy the model's own request schema: ${ajvErrorsText(body.errors)}`);
}

function checkPricing(e: ModelEntry, where: string): void {
  const unconfirmed = (e.pricing as unknown as Partial<UnconfirmedPricing> | undefined)?.unconfirmed;
  if (unconfirmed !== undefined) fail(where, `has no confirmed price (${unconfirmed}); configure one in MODEL_PRICES or leave the model out`);
  try {
    validatePricing(e.pricing);
  } catch (err) {
    fail(where, `${(err as Error).message}. A model without a valid price is never served`);
  }
  if (Object.hasOwn(e.requestSchema.properties, 'enable_prompt_expansion') && e.pricing.promptExpansionUsd === undefined) {
    fail(where, 'the schema offers enable_prompt_expansion but pricing.promptExpansionUsd is missing; expansion would be billed $0');
  }
}

function freezeEntry(e: ModelEntry): ModelEntry {
  return Object.freeze({
    ...e,
    aliases: Object.freeze([...e.aliases]),
    defaults: Object.freeze({ ...e.defaults }),
    pricing: Object.freeze({ ...e.pricing }),
  });
}

/**
 * Builds the registry, compiling each model's validators once. Throws, naming
 * the model and the problem, on any invalid entry or clashing name.
 */
export function createModelRegistry(entries: readonly ModelEntry[]): CompiledModelRegistry {
  if (!Array.isArray(entries) || entries.length === 0) throw new Error('Model registry: no models configured');
  const byName = new Map<string, ModelEntry>();
  const validators = new Map<ModelEntry, ModelValidators>();
  const list: ModelEntry[] = [];
  const variants = new Map<string, ModelEntry>();

  entries.forEach((raw, i) => {
    const where = typeof raw?.id === 'string' ? raw.id : `entry #${i}`;
    checkEntryShape(raw, where);
    checkSchema(raw, where);
    let compiled: ModelValidators;
    try {
      const imageSizeSchema = raw.requestSchema.properties['image_size'];
      compiled = {
        body: compileInput(raw.requestSchema),
        imageSize: imageSizeSchema === undefined ? undefined : compileInput(imageSizeSchema),
      };
    } catch (err) {
      fail(where, `requestSchema does not compile: ${(err as Error).message}`);
    }
    checkDefaults(raw, where, compiled.body);
    checkPricing(raw, where);

    const entry = freezeEntry(raw);
    for (const name of [entry.id, ...entry.aliases]) {
      const clash = byName.get(name);
      if (clash) fail(where, `name "${name}" is already taken by ${clash.id}`);
      byName.set(name, entry);
    }
    validators.set(entry, compiled);
    list.push(entry);
    for (const kind of ['image_to_image', 'inpaint'] as const) {
      const v = editVariant(entry, kind);
      if (!v) continue;
      validators.set(v, checkEdit(v, `${where} (${kind} edits)`));
      variants.set(`${kind}\0${entry.id}`, v);
    }
  });
  Object.freeze(list);

  const validatorsOf = (model: ModelEntry): ModelValidators => {
    const v = validators.get(model);
    if (!v) throw new Error(`Model registry: ${model.id} is not an entry of this registry`);
    return v;
  };
  return {
    lookup: (name) => byName.get(name),
    list: () => list,
    validators: validatorsOf,
    checkBody: (model, body) => checkBody(list, validatorsOf(model), model, body),
    imageSize: (model, req) => imageSizeOf(validatorsOf(model), model, req),
    pixels: pixelsOf,
    ignoredHints,
    falInput: falInputOf,
    edit: (model, kind) => variants.get(`${kind}\0${model.id}`),
    capabilities: (model) => capabilitiesOf(byName.get(model.id) ?? model),
    forEndpoint(name, endpoint) {
      const entry = byName.get(name);
      if (!entry || entry.endpoint === endpoint) return entry;
      return [variants.get(`image_to_image\0${entry.id}`), variants.get(`inpaint\0${entry.id}`)].find((v) => v?.endpoint === endpoint);
    },
  };
}

/** An edit endpoint's entry: its id, price and body schema checked like a model's own. */
function checkEdit(v: ModelEntry, where: string): ModelValidators {
  if (!ENDPOINT_ID.test(v.endpoint)) fail(where, `endpoint must be a fal endpoint id (got ${JSON.stringify(v.endpoint)})`);
  if (!isPositiveInt(v.edits?.maxSide)) fail(where, 'edits.maxSide must be a positive integer');
  let compiled: ModelValidators;
  try {
    const imageSizeSchema = v.requestSchema.properties['image_size'];
    compiled = { body: compileInput(v.requestSchema), imageSize: imageSizeSchema === undefined ? undefined : compileInput(imageSizeSchema) };
  } catch (err) {
    fail(where, `edits.requestSchema does not compile: ${(err as Error).message}`);
  }
  for (const field of ['model', 'prompt', 'image_url']) {
    if (!Object.hasOwn(v.requestSchema.properties, field)) fail(where, `edits.requestSchema must define "${field}"`);
  }
  checkDefaults(v, where, compiled.body);
  checkPricing(v, where);
  return compiled;
}
