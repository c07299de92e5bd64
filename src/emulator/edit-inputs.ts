/**
 * The inputs of an image-to-image or inpaint job, fetched as fal's runner
 * fetches them before it starts: an input that cannot be downloaded or read
 * fails the job with fal's `file_download_error` / `image_load_error`
 * (https://fal.ai/docs/documentation/model-apis/errors), and is billed like
 * any app error that reached a runner.
 *
 * Where the bytes come from: the emulator's own CDN (uploaded files and
 * emulated images, under its address or fal's media hosts), or a host the
 * emulator was told to fetch from (`inputHosts`); real fal fetches any public
 * URL, the emulator, a test tool, nothing else.
 */
import sharp from 'sharp';
import type { Ctx } from './context.js';
import type { EndpointSpec } from './endpoints.js';

export interface EditInput {
  image_url: string;
  mask_url?: string;
  strength: number;
  /** The input image's size: what `image_size` `auto` renders at. */
  width: number;
  height: number;
}

type Loaded = { ok: true; edit: EditInput } | { ok: false; detail: Record<string, unknown> };

const INPUT_MAX_BYTES = 64 * 1024 * 1024;

/** The bytes behind an input URL, or undefined when they cannot be had. */
export async function inputBytes(ctx: Ctx, url: string): Promise<Buffer | undefined> {
  const own = await ctx.mediaBytes(url);
  if (own !== 'foreign') return own;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (!ctx.options.inputHosts.has(u.host.toLowerCase()) && !ctx.options.inputHosts.has(u.hostname.toLowerCase())) return undefined;
  try {
    const res = await fetch(u, { redirect: 'error', signal: AbortSignal.timeout(10_000) });
    if (!res.ok) return undefined;
    const bytes = Buffer.from(await res.arrayBuffer());
    return bytes.length <= INPUT_MAX_BYTES ? bytes : undefined;
  } catch {
    return undefined;
  }
}

function failure(field: string, url: string, type: 'file_download_error' | 'image_load_error'): Loaded {
  const msg = type === 'file_download_error' ? `Failed to download the file from ${url}` : `Failed to load the image from ${url}`;
  return { ok: false, detail: { loc: ['body', field], msg, type, url: `https://docs.fal.ai/errors#${type}`, input: url } };
}

async function sizeOf(bytes: Buffer): Promise<{ width: number; height: number } | undefined> {
  try {
    const m = await sharp(bytes).metadata();
    return m.width && m.height ? { width: m.width, height: m.height } : undefined;
  } catch {
    return undefined;
  }
}

export async function loadEditInputs(ctx: Ctx, images: NonNullable<EndpointSpec['images']>, resolved: Record<string, unknown>): Promise<Loaded> {
  const imageUrl = String(resolved[images.image] ?? '');
  const bytes = await inputBytes(ctx, imageUrl);
  if (!bytes) return failure(images.image, imageUrl, 'file_download_error');
  const size = await sizeOf(bytes);
  if (!size) return failure(images.image, imageUrl, 'image_load_error');
  const edit: EditInput = { image_url: imageUrl, strength: typeof resolved.strength === 'number' ? resolved.strength : 0.6, ...size };
  if (images.mask) {
    const maskUrl = String(resolved[images.mask] ?? '');
    const mask = await inputBytes(ctx, maskUrl);
    if (!mask) return failure(images.mask, maskUrl, 'file_download_error');
    if (!(await sizeOf(mask))) return failure(images.mask, maskUrl, 'image_load_error');
    edit.mask_url = maskUrl;
  }
  return { ok: true, edit };
}
