/**
 * Request normalization: an untrusted body in either dialect (aimlapi/fal
 * field names or OpenAI's) becomes one canonical request and the exact fal
 * input. Order matters and is part of the contract: the body must be an
 * object, then the model is looked up (so an unknown model is a 404 whatever
 * else is wrong), then the model's own schema, then the checks that span
 * fields. Nothing is clamped or dropped silently: every value reaches fal, is
 * consumed here with a meaning, is refused with a 400 naming the field, or is
 * a hint the field policy (src/schemas/fields.ts, FIELD_RULES) lets through
 * and the caller is told was ignored. The steps that read a model's schema
 * and the field policy are the registry's (`ModelRegistry`, implemented in
 * src/models/request-fields.ts): this module puts them in order.
 */
import { invalidRequest, modelNotFound } from '../errors.js';
import type { EditKind, ModelEntry } from '../models/registry.js';
import type { ModelRegistry } from './ports.js';
import type { ImageRequestFields, OutputFormat, ResponseFormat } from '../schemas/image-request.js';

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

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

export function normalizeRequest(registry: ModelRegistry, body: unknown, opts: NormalizeOptions = {}): CanonicalRequest {
  if (!isPlainObject(body)) throw invalidRequest('The request body must be a JSON object.', null);

  const name = Object.hasOwn(body, 'model') ? body['model'] : undefined;
  const found = typeof name === 'string' ? registry.lookup(name) : undefined;
  if (!found) throw modelNotFound(name, registry.list().map((m) => m.id));
  const model = opts.edit ? editModel(registry, found, opts.edit.kind) : found;

  registry.checkBody(model, body);
  const req = body as ImageRequestFields;

  // The schema's pattern admits only alibaba, fal or auto, in any case: short enough to quote whole.
  if (req.provider !== undefined && req.provider.toLowerCase() === 'alibaba') {
    throw invalidRequest(
      `provider ${JSON.stringify(req.provider)} is not available: this service generates every image with fal. Send "fal" or "auto", or leave provider out.`,
      'provider',
    );
  }

  const n = req.n ?? undefined;
  if (n !== undefined && req.num_images !== undefined && n !== req.num_images) {
    throw invalidRequest(`n (${n}) and num_images (${req.num_images}) disagree; send one of them`, 'n');
  }
  const numImages = n ?? req.num_images ?? model.defaults.num_images;

  const imageSize = registry.imageSize(model, req);

  const stream = req.stream === true;
  // OpenAI's stream events carry only base64; quietly answering a "url" caller
  // with base64 would hand it a field it does not read.
  if (stream && req.response_format === 'url') {
    throw invalidRequest('response_format "url" cannot be streamed: stream events carry the image as b64_json. Leave response_format out (or send "b64_json"), or send stream false.', 'response_format');
  }
  const ignoredParams = registry.ignoredHints(model, body, { stream, strict: opts.strictParams === true });

  const outputFormat = req.output_format ?? model.defaults.output_format;
  const pinned: Record<string, unknown> = {
    image_size: imageSize,
    num_images: numImages,
    output_format: outputFormat,
    enable_safety_checker: req.enable_safety_checker ?? model.defaults.enable_safety_checker,
    enable_prompt_expansion: req.enable_prompt_expansion ?? model.defaults.enable_prompt_expansion ?? false,
  };

  const falInput = registry.falInput(model, body, pinned);

  return {
    model,
    falInput,
    numImages,
    size: imageSize === 'auto' ? autoSize(opts) : registry.pixels(imageSize),
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
