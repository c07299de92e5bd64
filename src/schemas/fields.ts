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
/** An absolute http(s) URL without spaces; whether it may be fetched is decided later (images/input-urls.ts). */
export const INPUT_URL_PATTERN = '^https?://[^\\s]+$';
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
  [INPUT_URL_PATTERN]: 'must be an absolute https:// URL',
  [PROVIDER_PATTERN]: 'must be one of "alibaba", "fal", "auto" (case-insensitive)',
  [LORA_PATH_PATTERN]:
    'must be an https:// URL, a Hugging Face repo id "owner/repo" (optionally "owner/repo/file.safetensors"), ' +
    'or a file under this server\'s LORA_DIR ("/absolute/path" or "./relative/to/LORA_DIR"); http:, file: and ".." are not accepted',
};

/**
 * The field policy: what happens to each field a request may carry, in three
 * classes (docs/clients.md#field-policy says the same in words).
 *
 * 1. Honoured. A model's own fal fields (src/schemas/request-builder.ts)
 *    reach fal as sent; the fields in the table below with role `mapped` are
 *    consumed by the normalizer with a meaning (`n` is `num_images`, `size`
 *    is `image_size`…) and never sent to fal as such.
 * 2. Refused with a 400 naming the field: a value the field's schema does not
 *    accept, and a field no schema of the model has. Everything that would
 *    change what is billed or delivered (count, size, format, content, LoRAs)
 *    is held here by the schemas, never passed over.
 * 3. Role `hint`: OpenAI presentation hints that no model here acts on and
 *    that change neither the price nor the images' count, size or format.
 *    They are accepted and declared back to the caller (`meta.ignored_params`
 *    and `x-ignored-params`), so nothing is dropped silently; with
 *    `STRICT_PARAMS=true` they are refused instead. `null` means "not given"
 *    on every OpenAI field, as in OpenAI's API, and is never declared.
 *
 * The normalizer interprets this table and has no knowledge of any field in
 * it. A model that can honour one of these names declares it among its own
 * fal fields, and its definition then replaces the table's (for that model the
 * field is class 1).
 */
export type FieldRole = 'mapped' | 'hint';

export interface RequestFieldRule<S extends object = object> {
  readonly role: FieldRole;
  /** What the field accepts. A value outside it is refused (class 2). */
  readonly schema: S;
  /** Why a value the schema refuses cannot be served, for the 400's message. */
  readonly refusedBecause?: string;
  /** A hint's reason for changing nothing, for a STRICT_PARAMS refusal and the docs. */
  readonly ignoredBecause?: string;
  /**
   * A hint that changes what is delivered on a stream (`stream: true`): there
   * only these values are accepted, and honoured; any other is refused.
   */
  readonly onStream?: { readonly honoured: readonly unknown[]; readonly refusedBecause: string };
}

function rule<const S extends object>(r: RequestFieldRule<S>): RequestFieldRule<S> & { readonly schema: S } {
  return r;
}

export const FIELD_RULES = {
  model: rule({ role: 'mapped', schema: { type: 'string', description: 'The model id (or one of its declared aliases), matched exactly.' } }),
  provider: rule({
    role: 'mapped',
    schema: {
      type: 'string',
      pattern: PROVIDER_PATTERN,
      description:
        'aimlapi routing hint, case-insensitive. "fal" and "auto" are accepted; "alibaba" is refused because this service only routes to fal. Never sent to fal.',
    },
  }),
  n: rule({
    role: 'mapped',
    schema: {
      type: ['integer', 'null'],
      minimum: 1,
      maximum: 10,
      description: "OpenAI name for num_images, up to OpenAI's limit of 10: beyond the model's per-job maximum the request is split into parallel fal jobs.",
    },
  }),
  size: rule({
    role: 'mapped',
    schema: {
      type: ['string', 'null'],
      pattern: SIZE_PATTERN,
      description: 'OpenAI name for image_size: "auto" (the default size) or "WIDTHxHEIGHT", held to the same side limits as image_size\'s {width, height}.',
    },
  }),
  response_format: rule({ role: 'mapped', schema: { enum: ['url', 'b64_json', null], description: 'url (default) or b64_json (bare base64).' } }),
  user: rule({ role: 'mapped', schema: { type: 'string', maxLength: 256, description: 'Your end-user id; kept with the usage record, never sent to fal.' } }),
  quality: rule({
    role: 'hint',
    schema: {
      enum: ['auto', 'standard', 'hd', 'low', 'medium', 'high', null],
      description:
        "OpenAI's quality tier. Accepted and ignored (listed in meta.ignored_params): the model has no quality tiers, and fal prices by megapixel, so it never changes the price. Refused when the service runs with STRICT_PARAMS=true.",
    },
    ignoredBecause: 'this model has no quality tiers (num_inference_steps trades speed for detail), and the price is per megapixel whatever the quality',
  }),
  style: rule({
    role: 'hint',
    schema: {
      enum: ['vivid', 'natural', null],
      description: "DALL-E 3's style. Accepted and ignored (listed in meta.ignored_params): describe the style in the prompt. Refused when the service runs with STRICT_PARAMS=true.",
    },
    ignoredBecause: 'this model has no style control; describe the style in the prompt',
  }),
  background: rule({
    role: 'hint',
    schema: {
      enum: ['auto', null],
      description:
        'Only "auto", accepted and ignored (listed in meta.ignored_params). "transparent" and "opaque" are refused: the model has no background control, so either would promise something it cannot deliver.',
    },
    refusedBecause: 'this model has no background control, so it cannot promise a transparent or an opaque background; send "auto" or leave background out',
    ignoredBecause: 'this model has no background control',
  }),
  moderation: rule({
    role: 'hint',
    schema: {
      enum: ['auto', 'low', null],
      description:
        "OpenAI's moderation level. Accepted and ignored (listed in meta.ignored_params): enable_safety_checker is what controls NSFW flagging here. Refused when the service runs with STRICT_PARAMS=true.",
    },
    ignoredBecause: 'moderation cannot be changed here; enable_safety_checker controls NSFW flagging',
  }),
  output_compression: rule({
    role: 'hint',
    schema: {
      type: ['integer', 'null'],
      minimum: 0,
      maximum: 100,
      description: 'OpenAI\'s compression level, 0 to 100. Accepted and ignored (listed in meta.ignored_params) by models that cannot set it. Refused when the service runs with STRICT_PARAMS=true.',
    },
    ignoredBecause: 'the compression level cannot be chosen for this model; output_format chooses the format',
  }),
  partial_images: rule({
    role: 'hint',
    schema: {
      type: ['integer', 'null'],
      minimum: 0,
      maximum: 3,
      description:
        'OpenAI\'s partial images of a stream, 0 to 3. Without stream it changes nothing: accepted and ignored (listed in meta.ignored_params), refused when the service runs with STRICT_PARAMS=true. With stream: true only 0 is accepted (no partial images are made).',
    },
    ignoredBecause: 'partial images are only sent on a stream (stream: true)',
    onStream: { honoured: [0], refusedBecause: 'this model makes no partial images; send 0 or leave partial_images out' },
  }),
  stream: rule({
    role: 'mapped',
    schema: {
      type: ['boolean', 'null'],
      description:
        'true: answer with Server-Sent Events (progress while fal works, then one image_generation.completed event per image, ' +
        'always base64; response_format "url" is refused). Not combinable with Idempotency-Key.',
    },
  }),
} as const;

export type FieldName = keyof typeof FIELD_RULES;

type SchemasOf<T> = { readonly [K in keyof T]: T[K] extends { readonly schema: infer S } ? S : never };

function schemasOf<const T extends Record<string, { readonly schema: object }>>(rules: T): SchemasOf<T> {
  return Object.fromEntries(Object.entries(rules).map(([k, r]) => [k, r.schema])) as SchemasOf<T>;
}

export const providerField = FIELD_RULES.provider.schema;

/** OpenAI's images API fields, in the order they are documented; each is its table entry's schema. */
export const openAiImageFields = schemasOf({
  n: FIELD_RULES.n,
  size: FIELD_RULES.size,
  response_format: FIELD_RULES.response_format,
  user: FIELD_RULES.user,
  quality: FIELD_RULES.quality,
  style: FIELD_RULES.style,
  background: FIELD_RULES.background,
  moderation: FIELD_RULES.moderation,
  output_compression: FIELD_RULES.output_compression,
  partial_images: FIELD_RULES.partial_images,
  stream: FIELD_RULES.stream,
});

/** Why a field refuses a value its schema does not accept, for the 400's message. Keyed by the top-level field name. */
export const UNSUPPORTED_VALUE_REASONS: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(FIELD_RULES as Record<string, RequestFieldRule>).flatMap(([k, r]) => (r.refusedBecause ? [[k, r.refusedBecause]] : [])),
);

/**
 * The table's rule for `field` on a model whose request schema is
 * `properties`, or undefined when the field is the model's own (a fal field,
 * honoured as sent). The table applies exactly where the model's schema
 * carries the table's own definition, so a model that redefines a name takes
 * it over.
 */
export function fieldRule(properties: Readonly<Record<string, object>>, field: string): RequestFieldRule | undefined {
  if (!Object.hasOwn(FIELD_RULES, field)) return undefined;
  const r = (FIELD_RULES as Record<string, RequestFieldRule>)[field]!;
  return properties[field] === r.schema ? r : undefined;
}

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
  model: FIELD_RULES.model.schema,
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
 * Request fields sent to fal on every request (from the model's `defaults`
 * when the caller omits them) because the price depends on them: a change of
 * fal's defaults cannot make an image cost something other than what we bill.
 */
export const PINNED_FIELDS = ['image_size', 'num_images', 'output_format', 'enable_safety_checker', 'enable_prompt_expansion'] as const;
