/** Small node:http helpers; the emulator stays on plain node:http to be cheap. */
import type { IncomingMessage, ServerResponse } from 'node:http';

export type Headers = Record<string, string | number>;

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Headers = {}): void {
  if (res.headersSent || res.destroyed) return;
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

export function sendBytes(
  res: ServerResponse,
  status: number,
  body: Buffer | string,
  contentType: string,
  headers: Headers = {},
  headOnly = false,
): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...headers });
  res.end(headOnly ? undefined : body);
}

export class BodyTooLargeError extends Error {
  override name = 'BodyTooLargeError';
}

export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new BodyTooLargeError(`body exceeds ${limit} bytes`));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new BodyTooLargeError(`body exceeds ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Parses a JSON body; an empty body is an empty object (fal then reports missing fields). */
export function parseJsonBody(buf: Buffer): { ok: true; value: unknown } | { ok: false; message: string } {
  const text = buf.toString('utf8');
  if (text.trim() === '') return { ok: true, value: {} };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  }
}

export function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * Seconds from fal's object lifecycle headers (`X-Fal-Object-Lifecycle-Preference`
 * on jobs, `X-Fal-Object-Lifecycle` on uploads: `{"expiration_duration_seconds": N | null}`);
 * null = never expires; undefined when absent or unreadable (fal then applies the account's default).
 */
export function lifecycleSeconds(raw: string | undefined): number | null | undefined {
  if (!raw) return undefined;
  try {
    const v = (JSON.parse(raw) as { expiration_duration_seconds?: unknown }).expiration_duration_seconds;
    if (v === null) return null;
    if (typeof v === 'number' && Number.isInteger(v) && v > 0) return v;
  } catch {
    // An unreadable preference is ignored.
  }
  return undefined;
}
