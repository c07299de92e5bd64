/**
 * Builds a model's request schema from field definitions, so a new model is
 * a list of the fal fields it takes (with its own limits and defaults) and
 * never a copy of the common parts. Every schema built here has `model` and
 * `prompt` first, the model's fal fields next and OpenAI's fields last, is
 * closed (`additionalProperties: false`) and is emitted to `schemas/` like
 * any other (src/schemas/index.ts).
 *
 * The factories below parameterise the fields whose limits differ between
 * fal endpoints; a field that means the same everywhere (seed,
 * enable_safety_checker, loras…) is shared as is from ./fields.ts.
 */
import { falImageFields, IMAGE_SIZE_PRESET_PIXELS, IMAGE_SIZE_PRESETS, openAiImageFields } from './fields.js';

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

export interface RequestSchemaSpec<F extends Record<string, object>> {
  readonly title: string;
  readonly description: string;
  /** The model's fal fields, in the order they should be documented. */
  readonly fields: F;
}

export function imageRequestSchema<const F extends Record<string, object>>(spec: RequestSchemaSpec<F>) {
  return {
    $schema: DRAFT_07,
    title: spec.title,
    description: spec.description,
    type: 'object',
    // The model's own fields are spread again last: a model that can honour one of OpenAI's names
    // (output_compression, say) declares it, and its definition replaces the field policy's (./fields.ts).
    properties: { model: falImageFields.model, prompt: falImageFields.prompt, ...spec.fields, ...openAiImageFields, ...spec.fields },
    required: ['model', 'prompt'],
    additionalProperties: false,
  } as const;
}

function presetWords(preset: keyof typeof IMAGE_SIZE_PRESET_PIXELS): string {
  const px = IMAGE_SIZE_PRESET_PIXELS[preset];
  return `${preset} (${px.width}x${px.height})`;
}

/**
 * `image_size` as a preset name or `{width, height}`. The side limits are the
 * tighter of fal's and aimlapi's published ones for the model; OpenAI's
 * `size: "WxH"` is held to the same object schema by the normalizer.
 */
export function imageSizeField<const Min extends number, const Max extends number, const Step extends number>(o: {
  minSide: Min;
  maxSide: Max;
  multipleOf: Step;
  defaultPreset: keyof typeof IMAGE_SIZE_PRESET_PIXELS;
}) {
  const side = { type: 'integer', minimum: o.minSide, maximum: o.maxSide, multipleOf: o.multipleOf } as const;
  return {
    description:
      `A preset name, or {width, height} in pixels (each an integer from ${o.minSide} to ${o.maxSide}, a multiple of ${o.multipleOf}). ` +
      `Default ${presetWords(o.defaultPreset)}.`,
    anyOf: [
      { type: 'string', enum: IMAGE_SIZE_PRESETS },
      { type: 'object', properties: { width: side, height: side }, required: ['width', 'height'], additionalProperties: false },
    ],
  } as const;
}

export function numImagesField<const Max extends number>(max: Max) {
  return { type: 'integer', minimum: 1, maximum: max, description: `Images to generate in one fal job, 1 to ${max}. Default 1.` } as const;
}

export function inferenceStepsField<const Min extends number, const Max extends number>(min: Min, max: Max, def: number) {
  return { type: 'integer', minimum: min, maximum: max, description: `Denoising steps, ${min} to ${max}. Default ${def}.` } as const;
}

export function guidanceScaleField<const Min extends number, const Max extends number>(min: Min, max: Max, def: number) {
  return {
    type: 'number',
    minimum: min,
    maximum: max,
    description: `How closely the image follows the prompt (classifier-free guidance), ${min} to ${max}. Default ${def}.`,
  } as const;
}

/** null stays accepted on every model: it is OpenAI's "not given" for the field both dialects share. */
export function outputFormatField<const F extends readonly ('jpeg' | 'png' | 'webp')[]>(formats: F, def: F[number]) {
  return { enum: [...formats, null], description: `Image file format: ${formats.join(', ')}. Default ${def}. null means the default.` } as const;
}

export function accelerationField(def: 'none' | 'regular' | 'high') {
  return { type: 'string', enum: ['none', 'regular', 'high'], description: `Speed/quality trade-off. Default ${def}.` } as const;
}

/** fal sets no length limit; the same 4000 characters as the prompt keep a body from carrying a novel to fal. */
export const negativePromptField = {
  type: 'string',
  maxLength: 4000,
  description: 'What the image should not show, up to 4000 characters. Default "" (nothing).',
} as const;
