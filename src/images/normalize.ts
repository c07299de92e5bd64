/**
 * Request normalization: an untrusted body in either dialect (aimlapi/fal
 * field names or OpenAI's) becomes one canonical request and the exact fal
 * input. Order matters and is part of the contract: the body must be an
 * object, then the model is looked up (so an unknown model is a 404 whatever
 * else is wrong), then the model's own schema, then the checks that span
 * fields. Nothing is clamped or dropped silently: every value reaches fal, is
 * consumed here with a meaning, is refused with a 400 naming the field, or is
 * a hint the field policy (src/schemas/fields.ts, FIELD_RULES) lets through
 * and the caller is told was ignored.
 */
import { invalidRequest, modelNotFound } from '../errors.js';
import type { EditKind, ModelEntry } from '../models/registry.js';
import { describeValidationErrors, showValue } from '../schemas/describe-error.js';
import { fieldRule, IMAGE_SIZE_PRESET_PIXELS, PINNED_FIELDS, type ImageSizePreset } from '../schemas/fields.js';
import type { ModelRegistry } from './ports.js';
import type { ImageRequestFields, ImageSizeValue, OutputFormat, ResponseFormat } from '../schemas/image-request.js';

export interface CanonicalRequest {
  /** The resolved registry entry. */
  model: ModelEntry;
  /**
   * Exactly what goes to fal. Never carries `sync_mode` (how images come
   * back is the gateway's choice, not the caller's). The price-deciding
   * fields are always explicit so fal's defaults cannot drift from our bill.
   */
  falInput: Record<string, unknown>;
  numImages: number;
  /** Pixels of each requested image. */
  size: { width: number; height: number };
  responseFormat: ResponseFormat;
  /** Answer with Server-Sent Events; implies b64_json. */
  stream: boolean;
  outputFormat: OutputFormat;
  promptExpansion: boolean;
  /** The caller's end-user id, for usage attribution only. */
  user: string | undefined;
  /**
   * The top-level fields the caller sent, so an upstream complaint about a
   * fal field (`image_size`) can be reported under the name the caller used
   * (`size`).
   */
  sentFields: readonly string[];
  /** The hints the caller sent that the model does not act on (class 3 of the field policy), in the order sent. */
  ignoredParams: readonly string[];
}

export interface NormalizeOptions {
  /** STRICT_PARAMS: hints (class 3 of the field policy) are refused with a 400 instead of ignored. */
  strictParams?: boolean;
  /**
   * An edit: the model runs on its edit endpoint of `kind` (a model without
   * one is refused), and `image_size` `auto` stands for `autoSize` (the input
   * image's size, or the model's largest when it is only known to fal).
   */
  edit?: { kind: EditKind; autoSize: { width: number; height: number } } | undefined;
}

/** Longest unknown field name echoed as the error's param; a longer one is not worth a client's memory. */
const SHOWN_NAME_MAX = 100;
/** A 1 MiB body can hold tens of thousands of keys; the error names enough of them to act on. */
const MAX_NAMES_LISTED = 10;

function fieldName(key: string): string {
  return /^[A-Za-z0-9_.-]{1,64}$/.test(key) ? key : showValue(key);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Unknown fields are refused before the schema runs so the message can name
 * all of them, and so keys like `__proto__` or `constructor` are rejected by
 * an own-property test rather than anything that walks prototypes. A field
 * another model accepts (`loras` on the non-LoRA model) says which.
 */
function rejectUnknownFields(registry: ModelRegistry, model: ModelEntry, body: Record<string, unknown>): void {
  const props = model.requestSchema.properties;
  const unknown = Object.keys(body).filter((k) => !Object.hasOwn(props, k));
  if (unknown.length === 0) return;
  for (const key of unknown) {
    const elsewhere = registry
      .list()
      .filter((m) => m !== model && Object.hasOwn(m.requestSchema.properties, key))
      .map((m) => m.id);
    if (elsewhere.length > 0) {
      throw invalidRequest(`${key} is not supported by ${model.id}; it is accepted by ${elsewhere.join(', ')}`, key);
    }
  }
  // param must be a name the caller sent, verbatim: a cut-down name would name a field that does not exist.
  const named = unknown.find((k) => k.length <= SHOWN_NAME_MAX) ?? null;
  const shown = unknown.slice(0, MAX_NAMES_LISTED).map(fieldName);
  if (unknown.length > MAX_NAMES_LISTED) shown.push(`and ${unknown.length - MAX_NAMES_LISTED} more`);
  const names = shown.join(', ');
  throw invalidRequest(
    unknown.length === 1 ? `Unrecognized request argument supplied: ${names}` : `Unrecognized request arguments supplied: ${names}`,
    named,
    'unknown_parameter',
  );
}

function pixelsOf(size: ImageSizeValue): { width: number; height: number } {
  if (typeof size === 'string') {
    const px = IMAGE_SIZE_PRESET_PIXELS[size as ImageSizePreset] as { width: number; height: number } | undefined;
    // The registry refuses schemas with presets missing from the table; this guards the invariant, never the caller.
    if (!px) throw new Error(`no pixel size known for image_size preset ${JSON.stringify(size)}`);
    return { width: px.width, height: px.height };
  }
  return { width: size.width, height: size.height };
}

function describeSize(size: ImageSizeValue): string {
  const { width, height } = pixelsOf(size);
  return typeof size === 'string' ? `"${size}" (${width}x${height})` : `{width: ${width}, height: ${height}}`;
}

/**
 * OpenAI's `size: "WxH"` is held to the model's own `image_size` limits, so
 * both dialects accept exactly the same sizes.
 */
function sizeFromOpenAi(registry: ModelRegistry, model: ModelEntry, size: string): { width: number; height: number } {
  const [w, h] = size.split('x');
  const dims = { width: Number(w), height: Number(h) };
  const validate = registry.validators(model).imageSize;
  if (validate && !validate(dims)) {
    const f = describeValidationErrors(validate.errors, { modelId: model.id });
    throw invalidRequest(`size ${showValue(size)}: ${f.message}`, 'size');
  }
  return dims;
}

/** The size asked for in either dialect (the same size given in both must agree), else the model's default. */
function imageSizeOf(registry: ModelRegistry, model: ModelEntry, req: ImageRequestFields): ImageSizeValue | 'auto' {
  const imageSize = req.image_size as ImageSizeValue | 'auto' | undefined;
  if (req.size == null || req.size === 'auto') return imageSize ?? model.defaults.image_size;
  const dims = sizeFromOpenAi(registry, model, req.size);
  if (req.image_size === undefined) return dims;
  if (imageSize === 'auto') throw invalidRequest(`size ${showValue(req.size)} and image_size "auto" disagree; send one of them`, 'size');
  const given = pixelsOf(req.image_size);
  if (given.width !== dims.width || given.height !== dims.height) {
    throw invalidRequest(`size ${showValue(req.size)} and image_size ${describeSize(req.image_size)} disagree; send one of them`, 'size');
  }
  return req.image_size;
}

/**
 * Class 3 of the field policy, read from the table: each hint the caller sent
 * is ignored and listed, or refused under STRICT_PARAMS. A hint that changes
 * what a stream delivers is honoured or refused there instead.
 */
function ignoredHints(model: ModelEntry, body: Record<string, unknown>, stream: boolean, strict: boolean): string[] {
  const ignored: string[] = [];
  for (const [key, value] of Object.entries(body)) {
    const rule = fieldRule(model.requestSchema.properties, key);
    if (rule?.role !== 'hint' || value === null) continue;
    if (stream && rule.onStream) {
      if (rule.onStream.honoured.includes(value)) continue;
      throw invalidRequest(`${key} ${showValue(value)} is not supported by ${model.id} with stream: true: ${rule.onStream.refusedBecause}`, key);
    }
    if (strict) {
      throw invalidRequest(
        `${key} ${showValue(value)} is not supported by ${model.id}: ${rule.ignoredBecause ?? 'the model does not act on it'}. ` +
          `This service refuses such hints (STRICT_PARAMS=true); leave ${key} out or send null.`,
        key,
        'unsupported_parameter',
      );
    }
    ignored.push(key);
  }
  return ignored;
}

export function normalizeRequest(registry: ModelRegistry, body: unknown, opts: NormalizeOptions = {}): CanonicalRequest {
  if (!isPlainObject(body)) throw invalidRequest('The request body must be a JSON object.', null);

  const name = Object.hasOwn(body, 'model') ? body['model'] : undefined;
  const found = typeof name === 'string' ? registry.lookup(name) : undefined;
  if (!found) throw modelNotFound(name, registry.list().map((m) => m.id));
  const model = opts.edit ? editModel(registry, found, opts.edit.kind) : found;

  rejectUnknownFields(registry, model, body);
  const validate = registry.validators(model).body;
  if (!validate(body)) {
    const f = describeValidationErrors(validate.errors, { modelId: model.id });
    let message = f.message;
    if (f.keyword === 'maximum' && f.param === 'n') message += `; ${model.id} makes at most ${model.maxImagesPerRequest} images per request`;
    if (f.keyword === 'maximum' && f.param === 'num_images') {
      message += `; ${model.id} makes at most ${model.maxImagesPerJob} images per job (OpenAI's n may ask for up to ${model.maxImagesPerRequest})`;
    }
    throw invalidRequest(message, f.param);
  }
  const req = body as ImageRequestFields;

  if (req.provider !== undefined && req.provider.toLowerCase() === 'alibaba') {
    throw invalidRequest(
      `provider ${showValue(req.provider)} is not available: this service generates every image with fal. Send "fal" or "auto", or leave provider out.`,
      'provider',
    );
  }

  const n = req.n ?? undefined;
  if (n !== undefined && req.num_images !== undefined && n !== req.num_images) {
    throw invalidRequest(`n (${n}) and num_images (${req.num_images}) disagree; send one of them`, 'n');
  }
  const numImages = n ?? req.num_images ?? model.defaults.num_images;

  const imageSize = imageSizeOf(registry, model, req);

  const stream = req.stream === true;
  // OpenAI's stream events carry only base64; quietly answering a "url" caller
  // with base64 would hand it a field it does not read.
  if (stream && req.response_format === 'url') {
    throw invalidRequest('response_format "url" cannot be streamed: stream events carry the image as b64_json. Leave response_format out (or send "b64_json"), or send stream false.', 'response_format');
  }
  const ignoredParams = ignoredHints(model, body, stream, opts.strictParams === true);

  const outputFormat = req.output_format ?? model.defaults.output_format;
  const pinned: Record<string, unknown> = {
    image_size: imageSize,
    num_images: numImages,
    output_format: outputFormat,
    enable_safety_checker: req.enable_safety_checker ?? model.defaults.enable_safety_checker,
    enable_prompt_expansion: req.enable_prompt_expansion ?? model.defaults.enable_prompt_expansion ?? false,
  };

  const falInput: Record<string, unknown> = { prompt: req.prompt };
  for (const field of PINNED_FIELDS) {
    if (Object.hasOwn(model.requestSchema.properties, field)) falInput[field] = structuredClone(pinned[field]);
  }
  for (const [key, value] of Object.entries(body)) {
    // Only the model's own fields reach fal; null is only valid on OpenAI-nullable fields, where it means "not given".
    if (fieldRule(model.requestSchema.properties, key) || Object.hasOwn(falInput, key) || value === null) continue;
    falInput[key] = structuredClone(value);
  }

  return {
    model,
    falInput,
    numImages,
    size: imageSize === 'auto' ? autoSize(opts) : pixelsOf(imageSize),
    responseFormat: stream ? 'b64_json' : (req.response_format ?? 'url'),
    stream,
    outputFormat,
    promptExpansion: falInput['enable_prompt_expansion'] === true,
    user: req.user,
    // An array, not a Set: the request keeps it for as long as its job waits, and it is read once, on an error.
    sentFields: Object.keys(body),
    ignoredParams,
  };
}

/** The model as an edit of `kind` runs it; a model without that endpoint is the caller's 400, naming the models that have one. */
function editModel(registry: ModelRegistry, model: ModelEntry, kind: EditKind): ModelEntry {
  const variant = registry.edit(model, kind);
  if (variant) return variant;
  const able = registry.list().filter((m) => registry.edit(m, kind)).map((m) => m.id);
  const which = able.length > 0 ? able.join(', ') : 'none of the models this service serves';
  if (kind === 'inpaint') throw invalidRequest(`${model.id} cannot repaint a masked area (no inpainting endpoint is served for it); leave mask out, or use one of: ${which}`, 'mask');
  throw invalidRequest(`${model.id} does not edit images; models that do: ${which}`, 'model');
}

function autoSize(opts: NormalizeOptions): { width: number; height: number } {
  // Only edit schemas offer "auto"; a generation never reaches here with it.
  if (!opts.edit) throw new Error('image_size "auto" outside an edit');
  return { ...opts.edit.autoSize };
}
