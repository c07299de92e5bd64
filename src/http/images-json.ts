import { createHash, randomUUID } from 'node:crypto';
import type { Request, Response } from 'express';
import { b64Parts } from '../images/b64-item.js';
import { drainedOrClosed } from './drain.js';

/**
 * Images answers as JSON, mounted by app.ts on the app's response prototype
 * (as the security headers are, src/http/waiting-requests.ts): `res.json` of
 * a body whose `data` items hold their base64 as Buffers
 * (src/images/b64-item.ts) writes it in pieces: the JSON around each image,
 * made by JSON.stringify with a marker where the image goes, and the image's
 * Buffers themselves in between, so a 10 MB image is never turned into a
 * string and copied (as Express's `res.json` would, twice). The result is
 * byte for byte what Express's `res.json` sends for the same body, with the
 * same headers (Content-Type, Content-Length and the ETag Express computes).
 * Any other body goes through Express's `res.json`.
 */
export function sendImagesAsBuffers(responsePrototype: object): void {
  const json = (responsePrototype as { json: (this: Response, body: unknown) => Response }).json;
  Object.defineProperty(responsePrototype, 'json', {
    configurable: true,
    writable: true,
    value: function jsonWithImageBuffers(this: Response, body: unknown): Response {
      const pieces = answerPieces(body, (v) => stringify(this.req, v));
      if (!pieces) return json.call(this, body);
      // Nothing may escape as an unhandled rejection: a write that fails ends the connection.
      writePieces(this.req, this, pieces).catch(() => this.destroy());
      return this;
    },
  });
}

async function writePieces(req: Request, res: Response, pieces: Buffer[]): Promise<void> {
  if (!res.get('Content-Type')) res.set('Content-Type', 'application/json; charset=utf-8');
  const length = pieces.reduce((n, p) => n + p.length, 0);
  if (!res.get('Transfer-Encoding')) res.set('Content-Length', String(length));
  const etag = etagOf(req, pieces, length);
  if (etag && !res.get('ETag')) res.set('ETag', etag);

  for (const piece of pieces) {
    if (res.destroyed) return;
    // Buffers are handed to the socket as they are; waiting for 'drain'
    // keeps this answer from queueing more than the socket's buffer at once.
    if (!res.write(piece)) await drainedOrClosed(res);
  }
  if (!res.destroyed) res.end();
}

/**
 * The answer as Buffers in order, or null when no item holds Buffers. The
 * markers are random, so the JSON text cannot contain one by chance; a marker
 * not found exactly once (which would mean it did) also gives null.
 */
export function answerPieces(body: unknown, toJson: (value: unknown) => string): Buffer[] | null {
  const data = (body as { data?: unknown } | null)?.data;
  if (!Array.isArray(data)) return null;
  const nonce = randomUUID();
  const images = new Map<string, readonly Buffer[]>();
  const items = data.map((item: unknown, k) => {
    const b64 = b64Parts(item);
    if (!b64) return item;
    const marker = `${nonce}-${k}`;
    images.set(marker, b64.parts);
    // Every field but b64_json (reading it would build the string we avoid).
    const copy: Record<string, unknown> = {};
    for (const key of Object.keys(item as object)) copy[key] = key === 'b64_json' ? marker : (item as Record<string, unknown>)[key];
    return copy;
  });
  if (images.size === 0) return null;
  const text = toJson({ ...(body as object), data: items });

  const at = [...images.keys()].map((marker) => {
    const i = text.indexOf(`"${marker}"`);
    return { marker, i, unique: i >= 0 && text.indexOf(`"${marker}"`, i + 1) < 0 };
  });
  if (at.some((m) => !m.unique)) return null;
  at.sort((a, b) => a.i - b.i);

  const pieces: Buffer[] = [];
  let from = 0;
  for (const { marker, i } of at) {
    pieces.push(Buffer.from(text.slice(from, i + 1), 'utf8'), ...images.get(marker)!);
    from = i + 1 + marker.length;
  }
  pieces.push(Buffer.from(text.slice(from), 'utf8'));
  return pieces.filter((p) => p.length > 0);
}

/** JSON.stringify under the app's `json replacer` / `json spaces` / `json escape` settings, as res.json does. */
function stringify(req: Request, value: unknown): string {
  const replacer = req.app.get('json replacer') as ((this: unknown, key: string, value: unknown) => unknown) | undefined;
  const spaces = req.app.get('json spaces') as string | number | undefined;
  const json = JSON.stringify(value, replacer, spaces);
  if (!req.app.get('json escape')) return json;
  return json.replace(/[<>&]/g, (c) => (c === '<' ? '\\u003c' : c === '>' ? '\\u003e' : '\\u0026'));
}

/**
 * Express's ETag (its `etag` setting, weak by default) for the whole answer,
 * hashed piece by piece. A custom ETag function needs the answer in one
 * piece, so then none is sent.
 */
function etagOf(req: Request, pieces: Buffer[], length: number): string | undefined {
  const setting: unknown = req.app.get('etag');
  const weak = setting === true || setting === 'weak';
  if (!weak && setting !== 'strong') return undefined;
  const sha1 = createHash('sha1');
  for (const p of pieces) sha1.update(p);
  const tag = `"${length.toString(16)}-${sha1.digest('base64').slice(0, 27)}"`;
  return weak ? `W/${tag}` : tag;
}
