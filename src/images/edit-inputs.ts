/**
 * An edit's inputs, made ready for fal before anything is reserved or sent:
 * the image (an uploaded file, or a URL fal fetches), the optional mask, and
 * the canonical request that runs on the model's image-to-image endpoint (no
 * mask) or inpaint endpoint (a mask). Every refusal is a 400 naming the
 * field, decided here on local work alone (the files' own bytes, the URLs'
 * addresses); only then are the files uploaded to fal storage.
 *
 * Files are read from disk where the route streamed them (never whole in
 * memory): the format is sniffed from the first bytes, the size read from
 * the header (sharp), and the upload is a Blob backed by the file
 * (`fs.openAsBlob`), streamed by the fal client.
 *
 * OpenAI's mask marks the area to edit with transparent pixels (alpha 0);
 * fal's inpaint mask marks it white ("white = repaint"). The mask is
 * converted with sharp: alpha 0 → white, anything else → black.
 */
import { randomUUID } from 'node:crypto';
import { openAsBlob } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import sharp, { type Metadata } from 'sharp';
import { invalidRequest } from '../errors.js';
import type { FalGateway } from '../fal/gateway.js';
import type { EditKind, ModelRegistry } from '../models/registry.js';
import type { InputUrlPolicy } from './input-urls.js';
import { uploadFailed } from './loras.js';
import { normalizeRequest, type CanonicalRequest, type NormalizeOptions } from './normalize.js';

/** A file the route wrote from the request body. */
export interface EditFile {
  path: string;
  bytes: number;
}

export interface EditInput {
  /** The JSON body, or a form's fields (coerced to the schema's types). */
  body: Record<string, unknown>;
  image?: EditFile | undefined;
  mask?: EditFile | undefined;
}

export interface EditInputsDeps {
  registry: ModelRegistry;
  fal: Pick<FalGateway, 'upload'>;
  urls: InputUrlPolicy;
  /** Where a converted mask is written; the caller removes it. */
  tmpDir: string;
  /** Seconds fal keeps an uploaded input; it is read once, when the job starts. */
  uploadLifetimeS?: number;
  uploadTimeoutMs?: number;
}

type Format = 'png' | 'jpeg' | 'webp';
const CONTENT_TYPES: Record<Format, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp' };

/** A converted mask is written under `deps.tmpDir`, which the caller removes whatever the outcome. */
export async function prepareEdit(deps: EditInputsDeps, input: EditInput, opts: NormalizeOptions, signal?: AbortSignal): Promise<CanonicalRequest> {
  const { body, image, mask } = input;
  const hasUrl = (f: string) => Object.hasOwn(body, f) && body[f] !== null && body[f] !== undefined;
  const kind: EditKind = mask || hasUrl('mask_url') ? 'inpaint' : 'image_to_image';
  refuseModelFirst(deps.registry, body, kind, opts);
  if (image && hasUrl('image_url')) throw invalidRequest('Send the image either as the file image or as image_url, not both.', 'image');
  // The error names the field the caller sent: image_url sent as null is theirs to correct, not a missing file.
  if (!image && !hasUrl('image_url')) {
    const sentNull = Object.hasOwn(body, 'image_url');
    throw invalidRequest(`image is required: the image to edit, as a file (multipart) or as image_url (JSON)${sentNull ? '; image_url was null' : ''}.`, sentNull ? 'image_url' : 'image');
  }
  if (mask && hasUrl('mask_url')) throw invalidRequest('Send the mask either as the file mask or as mask_url, not both.', 'mask');

  const imageInfo = image ? await inspect(image, 'image') : undefined;
  const model = deps.registry.lookup(String(body['model']))!;
  const maxSide = model.edits?.maxSide ?? 1024;
  const canonical = normalizeRequest(deps.registry, body, { ...opts, edit: { kind, autoSize: imageInfo ?? { width: maxSide, height: maxSide } } });
  const maskPath = mask ? await falMask(mask, imageInfo, join(deps.tmpDir, `mask-${randomUUID()}.png`)) : undefined;
  const falInput = canonical.falInput;
  if (hasUrl('image_url')) falInput['image_url'] = await deps.urls.check(String(body['image_url']), 'image_url');
  if (hasUrl('mask_url')) {
    falInput['mask_image_url'] = await deps.urls.check(String(body['mask_url']), 'mask_url');
    delete falInput['mask_url'];
  }
  // Everything is checked: only now does anything reach fal.
  if (image && imageInfo) falInput['image_url'] = await upload(deps, image.path, imageInfo.format, 'image', signal);
  if (maskPath) falInput['mask_image_url'] = await upload(deps, maskPath, 'png', 'mask', signal);
  return canonical;
}

/** The model and its capability decide first: an edit to a model that cannot take it is refused naming model (or mask), whatever the files hold. */
function refuseModelFirst(registry: ModelRegistry, body: Record<string, unknown>, kind: EditKind, opts: NormalizeOptions): void {
  const found = typeof body['model'] === 'string' ? registry.lookup(body['model']) : undefined;
  // normalizeRequest throws the 404, or the capability's 400, before it reads anything else.
  if (!found || !registry.edit(found, kind)) normalizeRequest(registry, body, { ...opts, edit: { kind, autoSize: { width: 1, height: 1 } } });
}

/** png, jpeg or webp by their signatures; anything else is not an image fal takes here. */
async function sniff(path: string): Promise<Format | undefined> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(12);
    const { bytesRead } = await fh.read(head, 0, 12, 0);
    const b = head.subarray(0, bytesRead);
    if (b.length >= 8 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
    if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
    if (b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') return 'webp';
    return undefined;
  } finally {
    await fh.close();
  }
}

async function inspect(file: EditFile, field: 'image' | 'mask'): Promise<{ format: Format; width: number; height: number; hasAlpha: boolean }> {
  const format = await sniff(file.path);
  if (!format) throw invalidRequest(`${field} must be a PNG, JPEG or WebP image (its bytes are none of these).`, field, 'invalid_image');
  let meta: Metadata;
  try {
    meta = await sharp(file.path).metadata();
  } catch {
    throw invalidRequest(`${field} could not be read as a ${format.toUpperCase()} image.`, field, 'invalid_image');
  }
  if (!meta.width || !meta.height) throw invalidRequest(`${field} has no size in its header.`, field, 'invalid_image');
  return { format, width: meta.width, height: meta.height, hasAlpha: meta.hasAlpha === true };
}

/** The caller's mask (transparent = edit) as fal's (white = repaint), the size of the image. */
async function falMask(mask: EditFile, image: { width: number; height: number } | undefined, out: string): Promise<string> {
  const m = await inspect(mask, 'mask');
  if (image && (m.width !== image.width || m.height !== image.height)) {
    throw invalidRequest(`mask is ${m.width}x${m.height} but the image is ${image.width}x${image.height}; they must be the same size.`, 'mask', 'invalid_mask');
  }
  if (!m.hasAlpha) throw invalidRequest('mask must have an alpha channel: fully transparent pixels mark the area to edit.', 'mask', 'invalid_mask');
  // threshold(1): alpha 0 → 0, any other alpha → 255; negate: the transparent area becomes white.
  await sharp(mask.path).ensureAlpha().extractChannel('alpha').threshold(1).negate({ alpha: false }).png().toFile(out);
  return out;
}

async function upload(deps: EditInputsDeps, path: string, format: Format, what: 'image' | 'mask', signal: AbortSignal | undefined): Promise<string> {
  const timeout = AbortSignal.timeout(deps.uploadTimeoutMs ?? 120_000);
  try {
    return await deps.fal.upload(await openAsBlob(path, { type: CONTENT_TYPES[format] }), CONTENT_TYPES[format], `${what}.${format === 'jpeg' ? 'jpg' : format}`, {
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      lifetimeS: deps.uploadLifetimeS ?? 86_400,
    });
  } catch (err) {
    throw uploadFailed(err, `the ${what}`);
  }
}
