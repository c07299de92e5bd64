/**
 * The public CDN (`v3.fal.media`: rendered images, uploaded files, upload
 * PUTs) and the REST host (`rest.fal.ai`: upload initiate, webhook JWKS).
 * CDN reads need no key, as on fal; upload PUTs are authorised by their
 * one-time token, because the client sends them without credentials.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx, Route } from './context.js';
import { BodyTooLargeError, headerValue, parseJsonBody, readBody, sendBytes, sendJson } from './http.js';
import { CONTENT_TYPES, parseImageToken } from './images.js';
import { answerFault, authorize } from './queue-routes.js';

const IMMUTABLE = 'public, max-age=31536000, immutable';

export async function media(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const [files, first, second, ...extra] = route.segments;
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
    if (!spec || expired || spec.width * spec.height > ctx.options.maxRenderPixels) {
      sendJson(res, 404, { detail: 'File not found' });
      return;
    }
    const bytes = await ctx.images.get(spec);
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

async function upload(ctx: Ctx, req: IncomingMessage, res: ServerResponse, token: string): Promise<void> {
  ctx.calls.upload += 1;
  if (req.method !== 'PUT') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'PUT' });
    return;
  }
  const fault = ctx.takeFault(req, 'upload', ['http_error', 'delay', 'reset', 'non_json'], {});
  if (fault && (await answerFault(ctx, req, res, fault, randomUUID()))) return;
  let data: Buffer;
  try {
    data = await readBody(req, ctx.options.uploadLimit);
  } catch (err) {
    if (err instanceof BodyTooLargeError) sendJson(res, 413, { detail: 'File too large' });
    return;
  }
  if (!ctx.files.put(token, data, headerValue(req, 'content-type'))) {
    sendJson(res, 404, { detail: 'Unknown or already used upload URL' });
    return;
  }
  sendJson(res, 200, { status: 'ok' });
}

export async function rest(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const path = route.segments.join('/');
  if (path === '.well-known/jwks.json' && (req.method === 'GET' || req.method === 'HEAD')) {
    sendJson(res, 200, ctx.signer.jwks, { 'cache-control': 'public, max-age=86400' });
    return;
  }
  if (path === 'storage/upload/initiate') {
    await initiate(ctx, req, res);
    return;
  }
  if (path === 'storage/upload/initiate-multipart') {
    sendJson(res, 501, { detail: 'Multipart uploads (files over 90 MB) are not emulated' });
    return;
  }
  sendJson(res, 404, { detail: 'Not Found' });
}

async function initiate(ctx: Ctx, req: IncomingMessage, res: ServerResponse): Promise<void> {
  ctx.calls.upload += 1;
  const id = randomUUID();
  if (req.method !== 'POST') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    return;
  }
  if (!authorize(ctx, req, res, id)) return;
  const fault = ctx.takeFault(req, 'upload', ['http_error', 'delay', 'reset', 'non_json'], {});
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
  const ticket = ctx.files.initiate(contentType, name);
  const base = ctx.publicUrl();
  sendJson(res, 200, { upload_url: `${base}/${ticket.uploadPath}`, file_url: `${base}/${ticket.filePath}` });
}
