/**
 * A model's request fields as the registry checks and maps them: the field
 * steps of the `ModelRegistry` port (src/images/ports.ts), which
 * normalize.ts calls in its order. The model's schema and the field policy
 * (src/schemas/fields.ts, FIELD_RULES) are applied here, and every refusal
 * is a 400 naming the field, worded for the caller
 * (src/schemas/describe-error.ts).
 */
import { invalidRequest } from '../errors.js';
import { describeValidationErrors, showValue } from '../schemas/describe-error.js';
import { fieldRule, IMAGE_SIZE_PRESET_PIXELS, PINNED_FIELDS, type ImageSizePreset } from '../schemas/fields.js';
import type { ImageRequestFields, ImageSizeValue } from '../schemas/image-request.js';
import type { ModelEntry, ModelValidators } from './registry.js';

/** Longest unknown field name echoed as the error's param; a longer one is not worth a client's memory. */
const SHOWN_NAME_MAX = 100;
/** A 1 MiB body can hold tens of thousands of keys; the error names enough of them to act on. */
const MAX_NAMES_LISTED = 10;

function fieldName(key: string): string {
  return /^[A-Za-z0-9_.-]{1,64}$/.test(key) ? key : showValue(key);
}

/**
 * Unknown fields are refused before the schema runs so the message can name
 * all of them, and so keys like `__proto__` or `constructor` are rejected by
 * an own-property test rather than anything that walks prototypes. A field
 * another of `models` accepts (`loras` on the non-LoRA model) says which.
 * Then the model's schema.
 */
export function checkBody(models: readonly ModelEntry[], validators: ModelValidators, model: ModelEntry, body: Record<string, unknown>): void {
  rejectUnknownFields(models, model, body);
  const validate = validators.body;
  if (validate(body)) return;
  const f = describeValidationErrors(validate.errors, { modelId: model.id });
  let message = f.message;
  if (f.keyword === 'maximum' && f.param === 'n') message += `; ${model.id} makes at most ${model.maxImagesPerRequest} images per request`;
  if (f.keyword === 'maximum' && f.param === 'num_images') {
    message += `; ${model.id} makes at most ${model.maxImagesPerJob} images per job (OpenAI's n may ask for up to ${model.maxImagesPerRequest})`;
  }
  throw invalidRequest(message, f.param);
}

function rejectUnknownFields(models: readonly ModelEntry[], model: ModelEntry, body: Record<string, unknown>): void {
  const props = model.requestSchema.properties;
  const unknown = Object.keys(body).filter((k) => !Object.hasOwn(props, k));
  if (unknown.length === 0) return;
  for (const key of unknown) {
    const elsewhere = models.filter((m) => m !== model && Object.hasOwn(m.requestSchema.properties, key)).map((m) => m.id);
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

/** Pixels of an `image_size` value: a preset's from the field policy's table. */
export function pixelsOf(size: ImageSizeValue): { width: number; height: number } {
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
function sizeFromOpenAi(validators: ModelValidators, model: ModelEntry, size: string): { width: number; height: number } {
  const [w, h] = size.split('x');
  const dims = { width: Number(w), height: Number(h) };
  const validate = validators.imageSize;
  if (validate && !validate(dims)) {
    const f = describeValidationErrors(validate.errors, { modelId: model.id });
    throw invalidRequest(`size ${showValue(size)}: ${f.message}`, 'size');
  }
  return dims;
}

/** The size asked for in either dialect (the same size given in both must agree), else the model's default. */
export function imageSizeOf(validators: ModelValidators, model: ModelEntry, req: ImageRequestFields): ImageSizeValue | 'auto' {
  const imageSize = req.image_size as ImageSizeValue | 'auto' | undefined;
  if (req.size == null || req.size === 'auto') return imageSize ?? model.defaults.image_size;
  const dims = sizeFromOpenAi(validators, model, req.size);
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
export function ignoredHints(model: ModelEntry, body: Record<string, unknown>, opts: { stream: boolean; strict: boolean }): string[] {
  const ignored: string[] = [];
  for (const [key, value] of Object.entries(body)) {
    const rule = fieldRule(model.requestSchema.properties, key);
    if (rule?.role !== 'hint' || value === null) continue;
    if (opts.stream && rule.onStream) {
      if (rule.onStream.honoured.includes(value)) continue;
      throw invalidRequest(`${key} ${showValue(value)} is not supported by ${model.id} with stream: true: ${rule.onStream.refusedBecause}`, key);
    }
    if (opts.strict) {
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

/**
 * Exactly what goes to fal: the prompt, each price-deciding field the model
 * has (PINNED_FIELDS) at its value in `pinned`, and every other field of the
 * model's own the caller sent. The field policy's fields are consumed here,
 * never forwarded; null is only valid on OpenAI-nullable fields, where it
 * means "not given".
 */
export function falInputOf(model: ModelEntry, body: Record<string, unknown>, pinned: Readonly<Record<(typeof PINNED_FIELDS)[number], unknown>>): Record<string, unknown> {
  const falInput: Record<string, unknown> = { prompt: body['prompt'] };
  for (const field of PINNED_FIELDS) {
    if (Object.hasOwn(model.requestSchema.properties, field)) falInput[field] = structuredClone(pinned[field]);
  }
  for (const [key, value] of Object.entries(body)) {
    if (fieldRule(model.requestSchema.properties, key) || Object.hasOwn(falInput, key) || value === null) continue;
    falInput[key] = structuredClone(value);
  }
  return falInput;
}
