/**
 * The public CDN (`v3.fal.media`: rendered images, uploaded files, upload
 * PUTs, multipart parts and completes) and the REST host (`rest.fal.ai`:
 * upload initiate, multipart initiate, webhook JWKS). CDN reads need no key,
 * as on fal; upload PUTs, parts and completes are authorised by the token in
 * their URL, because the client sends them without credentials.
 */
import { MissingSourceError } from './images.js';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx, Route } from './context.js';
import { BodyTooLargeError, headerValue, lifecycleSeconds, parseJsonBody, readBody, sendBytes, sendJson } from './http.js';
import { largestImagePixels } from './endpoints.js';
import { CONTENT_TYPES, parseImageToken } from './images.js';
import { answerFault, authorize } from './queue-routes.js';
import { MAX_PART_NUMBER } from './storage.js';

const IMMUTABLE = 'public, max-age=31536000, immutable';
/** The call faults of the `upload` phase: initiate, single PUT, multipart parts and complete. */
const UPLOAD_FAULTS = ['http_error', 'delay', 'reset', 'non_json'] as const;

export async function media(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const [files, first, second, ...extra] = route.segments;
  if (files === 'files' && first === 'upload' && second === 'multipart') {
    await multipart(ctx, req, res, extra, route.query.get('upload_token'));
    return;
  }
  if (files !== 'files' || first === undefined || second === undefined || extra.length > 0) {
    sendJson(res, 404, { detail: 'Not Found' });
    return;
  }
  if (first === 'upload') {
    await upload(ctx, req, res, second);
    return;
  }
  ctx.calls.files += 1;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'GET, HEAD' });
    return;
  }
  const head = req.method === 'HEAD';
  if (first === 'emulated') {
    const spec = parseImageToken(second);
    const expired = spec?.expiresAt !== undefined && spec.expiresAt * 1000 <= Date.now();
    // A size no endpoint would make (or beyond the render limit) is refused before any work: token URLs are unsigned.
    if (!spec || expired || spec.width * spec.height > renderable(ctx)) {
      sendJson(res, 404, { detail: 'File not found' });
      return;
    }
    let bytes: Buffer;
    try {
      bytes = await ctx.images.get(spec);
    } catch (err) {
      // An edit's output is rendered from its input: gone with it.
      if (!(err instanceof MissingSourceError)) throw err;
      sendJson(res, 404, { detail: 'File not found' });
      return;
    }
    sendBytes(res, 200, bytes, CONTENT_TYPES[spec.format], { 'cache-control': IMMUTABLE }, head);
    return;
  }
  const file = ctx.files.get(first, second);
  if (!file) {
    sendJson(res, 404, { detail: 'File not found' });
    return;
  }
  sendBytes(res, 200, file.data, file.contentType, { 'cache-control': IMMUTABLE }, head);
}

const largestByEndpoints = new WeakMap<Ctx['endpoints'], number>();

/** The largest image the emulator serves: what its endpoints accept, within `maxRenderPixels`. */
function renderable(ctx: Ctx): number {
  let most = largestByEndpoints.get(ctx.endpoints);
  if (most === undefined) largestByEndpoints.set(ctx.endpoints, (most = largestImagePixels(ctx.endpoints.values())));
  return Math.min(most, ctx.options.maxRenderPixels);
}

async function upload(ctx: Ctx, req: IncomingMessage, res: ServerResponse, token: string): Promise<void> {
  ctx.calls.upload += 1;
  if (req.method !== 'PUT') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'PUT' });
    return;
  }
  const fault = ctx.takeFault(req, 'upload', UPLOAD_FAULTS, {});
  if (fault && (await answerFault(ctx, req, res, fault, randomUUID()))) return;
  let data: Buffer;
  try {
    data = await readBody(req, ctx.options.uploadLimit);
  } catch (err) {
    if (err instanceof BodyTooLargeError) sendJson(res, 413, { detail: 'File too large' });
    return;
  }
  const stored = ctx.files.put(token, data, headerValue(req, 'content-type'));
  if (!stored.ok) {
    sendJson(res, stored.status, { detail: stored.detail });
    return;
  }
  sendJson(res, 200, { status: 'ok' });
}

/**
 * `<upload_url>/<partNumber>` (PUT) and `<upload_url>/complete` (POST), the
 * URLs @fal-ai/client builds from the multipart upload URL (keeping its query
 * string, which carries the upload token). A part answers `{partNumber, etag}`
 * (the JS client reads the body) and an `ETag` header (what S3-style clients
 * read); complete checks the listed etags against the stored parts.
 */
async function multipart(ctx: Ctx, req: IncomingMessage, res: ServerResponse, rest: string[], token: string | null): Promise<void> {
  ctx.calls.upload += 1;
  const [id, action, ...extra] = rest;
  if (id === undefined || action === undefined || extra.length > 0) {
    sendJson(res, 404, { detail: 'Not Found: PUT parts to <upload_url>/<partNumber>, then POST <upload_url>/complete' });
    return;
  }
  const isComplete = action === 'complete';
  const method = isComplete ? 'POST' : 'PUT';
  if (req.method !== method) {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: method });
    return;
  }
  const fault = ctx.takeFault(req, 'upload', UPLOAD_FAULTS, {});
  if (fault && (await answerFault(ctx, req, res, fault, randomUUID()))) return;
  if (isComplete) {
    const checked = ctx.files.checkMultipart(id, token);
    if (!checked.ok) {
      sendJson(res, checked.status, { detail: checked.detail });
      return;
    }
    let raw: Buffer;
    try {
      raw = await readBody(req, 1024 * 1024);
    } catch (err) {
      if (err instanceof BodyTooLargeError) sendJson(res, 413, { detail: 'Request body too large' });
      return;
    }
    const parsed = parseJsonBody(raw);
    if (!parsed.ok) {
      sendJson(res, 400, { detail: `Invalid JSON body: ${parsed.message}` });
      return;
    }
    const done = ctx.files.completeMultipart(id, token, parsed.value);
    if (!done.ok) {
      sendJson(res, done.status, { detail: done.detail });
      return;
    }
    sendJson(res, 200, { file_url: `${ctx.publicUrl()}/${done.filePath}`, size: done.bytes });
    return;
  }
  const partNumber = /^[1-9][0-9]{0,4}$/.test(action) ? Number(action) : NaN;
  if (!(partNumber <= MAX_PART_NUMBER)) {
    sendJson(res, 400, { detail: `Part number must be an integer from 1 to ${MAX_PART_NUMBER}, got ${JSON.stringify(action)}` });
    return;
  }
  const checked = ctx.files.checkMultipart(id, token, partNumber);
  if (!checked.ok) {
    sendJson(res, checked.status, { detail: checked.detail });
    return;
  }
  let data: Buffer;
  try {
    data = await readBody(req, Math.min(checked.room, ctx.options.uploadLimit));
  } catch (err) {
    if (err instanceof BodyTooLargeError) sendJson(res, 413, { detail: 'Part too large for the emulator\'s file size limit' });
    return;
  }
  const part = ctx.files.putPart(id, token, partNumber, data);
  if (!part.ok) {
    sendJson(res, part.status, { detail: part.detail });
    return;
  }
  sendJson(res, 200, { partNumber: part.partNumber, etag: part.etag }, { etag: `"${part.etag}"` });
}

export async function rest(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const path = route.segments.join('/');
  if (path === '.well-known/jwks.json' && (req.method === 'GET' || req.method === 'HEAD')) {
    sendJson(res, 200, ctx.signer.jwks, { 'cache-control': 'public, max-age=86400' });
    return;
  }
  if (path === 'storage/upload/initiate') {
    await initiate(ctx, req, res, false);
    return;
  }
  if (path === 'storage/upload/initiate-multipart') {
    await initiate(ctx, req, res, true);
    return;
  }
  sendJson(res, 404, { detail: 'Not Found' });
}

async function initiate(ctx: Ctx, req: IncomingMessage, res: ServerResponse, multi: boolean): Promise<void> {
  ctx.calls.upload += 1;
  const id = randomUUID();
  if (req.method !== 'POST') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    return;
  }
  if (!authorize(ctx, req, res, id)) return;
  const fault = ctx.takeFault(req, 'upload', UPLOAD_FAULTS, {});
  if (fault && (await answerFault(ctx, req, res, fault, id))) return;
  let raw: Buffer;
  try {
    raw = await readBody(req, 64 * 1024);
  } catch {
    sendJson(res, 413, { detail: 'Request body too large' });
    return;
  }
  const parsed = parseJsonBody(raw);
  const body = parsed.ok && typeof parsed.value === 'object' && parsed.value !== null ? (parsed.value as Record<string, unknown>) : undefined;
  const contentType = body?.content_type;
  if (typeof contentType !== 'string' || contentType === '') {
    sendJson(res, 422, { detail: [{ loc: ['body', 'content_type'], msg: 'field required', type: 'value_error.missing' }] });
    return;
  }
  const name = typeof body?.file_name === 'string' && body.file_name !== '' ? body.file_name : 'file';
  // fal-js sends `X-Fal-Object-Lifecycle: {"expiration_duration_seconds": N}` with storage settings.
  const lifetime = lifecycleSeconds(headerValue(req, 'x-fal-object-lifecycle')) ?? ctx.options.mediaTtlS;
  const ticket = multi ? ctx.files.initiateMultipart(contentType, name, lifetime) : ctx.files.initiate(contentType, name, lifetime);
  const base = ctx.publicUrl();
  sendJson(res, 200, { upload_url: `${base}/${ticket.uploadPath}`, file_url: `${base}/${ticket.filePath}` });
}

