/**
 * Field definitions shared by every image-generation request schema.
 *
 * A model's request schema is assembled from these by spreading, so a field
 * means the same thing (and is validated the same way) on every model that
 * takes it, and the normalizer can read the validated body through one type.
 * Constraints follow aimlapi's published request schema for Z-Image (see
 * REFERENCE §1) and OpenAI's images API for the OpenAI-dialect fields.
 */

export const IMAGE_SIZE_PRESETS = [
  'square_hd',
  'square',
  'portrait_4_3',
  'portrait_16_9',
  'landscape_4_3',
  'landscape_16_9',
] as const;

export type ImageSizePreset = (typeof IMAGE_SIZE_PRESETS)[number];

/**
 * fal's preset sizes in pixels. Pricing is per pixel, so the table is what
 * turns a preset name into a bill; fal's example output confirms
 * landscape_4_3, independent clients agree on the rest.
 */
export const IMAGE_SIZE_PRESET_PIXELS: Readonly<Record<ImageSizePreset, { readonly width: number; readonly height: number }>> = {
  square_hd: { width: 1024, height: 1024 },
  square: { width: 512, height: 512 },
  portrait_4_3: { width: 768, height: 1024 },
  portrait_16_9: { width: 576, height: 1024 },
  landscape_4_3: { width: 1024, height: 768 },
  landscape_16_9: { width: 1024, height: 576 },
};

/** JSON's integers are exact only up to 2^53 - 1; a larger seed would silently change in transit. */
export const MAX_SEED = Number.MAX_SAFE_INTEGER;

export const PROMPT_PATTERN = '\\S';
export const SIZE_PATTERN = '^(?:auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$';
export const PROVIDER_PATTERN = '^(?:[aA][lL][iI][bB][aA][bB][aA]|[fF][aA][lL]|[aA][uU][tT][oO])$';
/**
 * An https URL (no credentials, since the host part allows no "@"), a
 * Hugging Face repo id `owner/repo`, optionally with a path to a
 * `.safetensors` file inside it, or a file on this server: `/absolute` or
 * `./relative` (to LORA_DIR). `..` is refused anywhere so no path can climb
 * out of a repo or directory; whether a local file is really inside LORA_DIR
 * (symlinks included) is decided later, on the filesystem (images/loras.ts).
 * A local path needs its `/` or `./` so it can never be mistaken for a repo id.
 */
export const LORA_PATH_PATTERN =
  '^(?!.*\\.\\.)(?:https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][^\\s\\\\]*)?' +
  '|[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(?:(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*/[A-Za-z0-9][A-Za-z0-9._-]*\\.safetensors)?' +
  '|\\.?/(?!/)[^\\s\\\\\\x00-\\x1f]+)$';

/**
 * What a failed `pattern` means, in words, keyed by the pattern itself so the
 * error mapper needs no knowledge of which field carries it.
 */
export const PATTERN_HINTS: Readonly<Record<string, string>> = {
  [PROMPT_PATTERN]: 'must contain at least one non-whitespace character',
  [SIZE_PATTERN]: 'must be "auto" or "WIDTHxHEIGHT" (for example "1024x768")',
  [PROVIDER_PATTERN]: 'must be one of "alibaba", "fal", "auto" (case-insensitive)',
  [LORA_PATH_PATTERN]:
    'must be an https:// URL, a Hugging Face repo id "owner/repo" (optionally "owner/repo/file.safetensors"), ' +
    'or a file under this server\'s LORA_DIR ("/absolute/path" or "./relative/to/LORA_DIR"); http:, file: and ".." are not accepted',
};

const imageSide = { type: 'integer', minimum: 512, maximum: 2048, multipleOf: 32 } as const;

/** The object form of `image_size`; `size: "WxH"` is checked against this too. */
export const customImageSizeField = {
  type: 'object',
  properties: { width: imageSide, height: imageSide },
  required: ['width', 'height'],
  additionalProperties: false,
} as const;

/**
 * The aimlapi / fal fields of the Z-Image Turbo endpoints. Models whose fal
 * limits differ compose theirs with ./request-builder.ts, sharing the
 * definitions here that mean the same on every model (seed, prompt…).
 */
export const falImageFields = {
  model: {
    type: 'string',
    description: 'The model id (or one of its declared aliases), matched exactly.',
  },
  prompt: {
    type: 'string',
    minLength: 1,
    maxLength: 4000,
    pattern: PROMPT_PATTERN,
    description: 'What to draw. 1 to 4000 characters, not only whitespace.',
  },
  image_size: {
    description:
      'A preset name, or {width, height} in pixels (each an integer from 512 to 2048, a multiple of 32). Default landscape_4_3 (1024x768).',
    anyOf: [{ type: 'string', enum: IMAGE_SIZE_PRESETS }, customImageSizeField],
  },
  num_images: { type: 'integer', minimum: 1, maximum: 4, description: 'Images to generate, 1 to 4. Default 1.' },
  num_inference_steps: { type: 'integer', minimum: 1, maximum: 8, description: 'Denoising steps, 1 to 8. Default 8.' },
  seed: {
    type: 'integer',
    minimum: 1,
    maximum: MAX_SEED,
    description: 'Same seed, prompt and settings give the same image. Random when absent; meta.seed reports the one used.',
  },
  output_format: { enum: ['jpeg', 'png', 'webp', null], description: 'Image file format. Default png. null means the default.' },
  enable_safety_checker: { type: 'boolean', description: 'Flag NSFW images in meta.images[].has_nsfw_concept. Default true.' },
  enable_prompt_expansion: {
    type: 'boolean',
    description: "Let an LLM rewrite the prompt before generating. Costs an extra $0.0025 per request. Default false (fal's default).",
  },
  acceleration: { type: 'string', enum: ['none', 'regular', 'high'], description: 'Speed/quality trade-off. Default regular.' },
} as const;

export const providerField = {
  type: 'string',
  pattern: PROVIDER_PATTERN,
  description:
    'aimlapi routing hint, case-insensitive. "fal" and "auto" are accepted; "alibaba" is refused because this service only routes to fal. Never sent to fal.',
} as const;

export const lorasField = {
  type: 'array',
  maxItems: 3,
  description: 'Up to 3 LoRA weights applied on top of the base model.',
  items: {
    type: 'object',
    properties: {
      path: {
        type: 'string',
        maxLength: 2048,
        pattern: LORA_PATH_PATTERN,
        description:
          'An https:// URL of the weights, a Hugging Face repo id owner/repo[/file.safetensors], or a file on this server under its LORA_DIR: ' +
          '"/absolute/path" or "./path/relative/to/LORA_DIR" (uploaded to fal storage once, then referenced by its fal URL). ' +
          'http:, file: and ".." are refused, as are local paths outside LORA_DIR or when LORA_DIR is not set.',
      },
      scale: { type: 'number', minimum: 0, maximum: 4, description: 'LoRA strength, 0 to 4. Default 1.' },
    },
    required: ['path'],
    additionalProperties: false,
  },
} as const;

/**
 * OpenAI's images API fields. Each is nullable, as in OpenAI's API, and null
 * means "not given". The ones this model family cannot act on accept only
 * the values that change nothing, so routers that always send them keep
 * working while a request that asks for something we cannot do is refused.
 */
export const openAiImageFields = {
  n: {
    type: ['integer', 'null'],
    minimum: 1,
    maximum: 10,
    description: "OpenAI name for num_images, up to OpenAI's limit of 10: beyond the model's per-job maximum the request is split into parallel fal jobs.",
  },
  size: {
    type: ['string', 'null'],
    pattern: SIZE_PATTERN,
    description: 'OpenAI name for image_size: "auto" (the default size) or "WIDTHxHEIGHT", held to the same side limits as image_size\'s {width, height}.',
  },
  response_format: { enum: ['url', 'b64_json', null], description: 'url (default) or b64_json (bare base64).' },
  user: { type: 'string', maxLength: 256, description: 'Your end-user id; kept with the usage record, never sent to fal.' },
  quality: { enum: ['auto', 'standard', null], description: 'Accepted for compatibility: only auto or standard.' },
  style: { enum: [null], description: 'Accepted for compatibility: only null.' },
  background: { enum: ['auto', 'opaque', null], description: 'Accepted for compatibility: only auto or opaque.' },
  moderation: { enum: ['auto', null], description: 'Accepted for compatibility: only auto.' },
  output_compression: { enum: [100, null], description: 'Accepted for compatibility: only 100.' },
  partial_images: { enum: [0, null], description: 'Accepted for compatibility: only 0.' },
  stream: {
    type: ['boolean', 'null'],
    description:
      'true: answer with Server-Sent Events (progress while fal works, then one image_generation.completed event per image, ' +
      'always base64; response_format "url" is refused). Not combinable with Idempotency-Key.',
  },
} as const;

/**
 * Why a compatibility field refuses a value, for the 400's message. Keyed by
 * the top-level field name.
 */
export const UNSUPPORTED_VALUE_REASONS: Readonly<Record<string, string>> = {
  quality: 'this model has no quality tiers; use num_inference_steps to trade speed for detail',
  style: 'this model has no style control; describe the style in the prompt',
  background: 'this model renders opaque images only; transparent backgrounds are not supported',
  moderation: 'moderation cannot be relaxed; use enable_safety_checker to control NSFW flagging',
  output_compression: 'the compression level cannot be chosen for this model',
  partial_images: 'partial images are not produced by this model',
};
