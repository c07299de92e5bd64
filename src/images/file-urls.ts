import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

/**
 * Capability URLs for the images this service serves from its own origin
 * (`/v1/files/...`, media of a fal-protocol server on a private address).
 * Clients download image URLs without our `Authorization` header, so the URL
 * itself is the permission: it names the tenant (the API key's id) and an
 * expiry, and carries an HMAC-SHA256 of the file's path, the tenant and the
 * expiry. A URL altered in any part, or past its expiry, verifies as null
 * and is answered 404 before any work is done. Every replica must hold the
 * same secret (FILE_URL_SECRET) to verify the URLs another one signed.
 */

export interface SignedFile {
  tenant: string;
  /** Unix seconds. */
  expiresAt: number;
}

export interface FileUrls {
  /** The query string (without `?`) that makes `/v1/files/<path>` readable by anyone holding it until it expires. */
  sign(path: string, tenant: string): string;
  /** What a request's query proves for `path`, or null when it proves nothing (missing, altered or expired). */
  verify(path: string, query: Record<string, unknown>): SignedFile | null;
}

export interface FileUrlOptions {
  secret: string | Buffer;
  ttlS: number;
  now?: () => number;
}

export function createFileUrls(opts: FileUrlOptions): FileUrls {
  const now = opts.now ?? Date.now;
  const mac = (path: string, tenant: string, expiresAt: number) =>
    createHmac('sha256', opts.secret).update(`${path}\n${tenant}\n${expiresAt}`).digest();
  return {
    sign(path, tenant) {
      const expiresAt = Math.floor(now() / 1000) + opts.ttlS;
      const params = new URLSearchParams({ tenant, expires: String(expiresAt), signature: mac(path, tenant, expiresAt).toString('base64url') });
      return params.toString();
    },
    verify(path, query) {
      const { tenant, expires, signature } = query;
      if (typeof tenant !== 'string' || typeof expires !== 'string' || typeof signature !== 'string') return null;
      if (!/^\d{1,12}$/.test(expires) || !/^[A-Za-z0-9_-]{43}$/.test(signature)) return null;
      const expiresAt = Number(expires);
      if (expiresAt * 1000 <= now()) return null;
      // Compared as text: base64url's last character carries 2 unused bits, so
      // decoding would let 4 spellings of one signature through.
      const given = Buffer.from(signature, 'latin1');
      const expected = Buffer.from(mac(path, tenant, expiresAt).toString('base64url'), 'latin1');
      return given.length === expected.length && timingSafeEqual(given, expected) ? { tenant, expiresAt } : null;
    },
  };
}

/**
 * The signing secret of a single process without FILE_URL_SECRET: made once
 * under DATA_DIR (mode 0600), so URLs survive a restart.
 */
export async function loadOrCreateFileUrlSecret(dataDir: string): Promise<Buffer> {
  const file = resolve(join(dataDir, 'file-url-secret'));
  const saved = await readSecret(file);
  if (saved) return saved;
  await mkdir(dataDir, { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
  // link() fails when the file exists: two processes starting at once on one
  // DATA_DIR both end up with whichever secret was linked first.
  await link(tmp, file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  await unlink(tmp);
  return (await readSecret(file))!;
}

async function readSecret(file: string): Promise<Buffer | undefined> {
  let saved: string;
  try {
    saved = (await readFile(file, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if (!/^[A-Za-z0-9_-]{43}$/.test(saved)) throw new Error(`${file} does not hold a file URL secret; delete it to make a new one`);
  return Buffer.from(saved, 'base64url');
}
