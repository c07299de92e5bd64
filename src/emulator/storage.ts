/**
 * fal's CDN upload flows. Single part: `initiate` hands out a one-time upload
 * URL and the file's final URL; the client PUTs the bytes (without
 * credentials: real upload URLs are pre-signed); the file URL then serves
 * them publicly. Multipart (what @fal-ai/client switches to above 90 MB):
 * `initiate-multipart` hands out an upload URL that the client PUTs numbered
 * parts under, then completes with the list of parts and their etags.
 * Files and pending parts live in memory, bounded in total; completed files
 * are evicted oldest first to make room, pending parts never are.
 */
import { createHash, randomBytes } from 'node:crypto';

interface StoredFile {
  contentType: string;
  data: Buffer;
  /** ms since epoch after which the file is gone (fal's media expiry); absent = kept. */
  expiresAt?: number;
}

interface PendingUpload {
  id: string;
  fileName: string;
  contentType: string;
  /** Seconds the file lives once uploaded; null = forever. */
  lifetimeS: number | null;
}

interface StoredPart {
  data: Buffer;
  etag: string;
}

interface PendingMultipart extends PendingUpload {
  token: string;
  parts: Map<number, StoredPart>;
  bytes: number;
}

export interface UploadTicket {
  /** Path (and, for multipart, query) of the upload URL, without the public base. */
  uploadPath: string;
  filePath: string;
}

/** A refusal the route turns into `status {detail}`. */
export interface StoreRefusal {
  ok: false;
  status: number;
  detail: string;
}

export type PartResult = { ok: true; partNumber: number; etag: string } | StoreRefusal;
export type CompleteResult = { ok: true; filePath: string; bytes: number } | StoreRefusal;

/** S3's part number range, which fal's multipart storage follows. */
export const MAX_PART_NUMBER = 10000;
/** Largest multipart file, before the store's own total bound (which also caps it). */
export const DEFAULT_MAX_FILE_BYTES = 1024 * 1024 * 1024;

export interface FileStoreLimits {
  /** Single-part uploads initiated but not yet PUT; oldest forgotten beyond this. */
  maxPending?: number;
  /** Multipart uploads initiated but not completed; oldest dropped (with their parts) beyond this. */
  maxPendingMultipart?: number;
  /** Largest multipart file; the effective cap is min(this, the store's total bytes). */
  maxFileBytes?: number;
}

export interface FileStore {
  /** `lifetimeS`: seconds the file is served once uploaded (null = forever), fal's media expiry. */
  initiate(contentType: string, fileName: string, lifetimeS?: number | null): UploadTicket;
  /** Stores bytes for a single-part upload token (one use). */
  put(token: string, data: Buffer, contentType: string | undefined): { ok: true } | StoreRefusal;
  initiateMultipart(contentType: string, fileName: string, lifetimeS?: number | null): UploadTicket;
  /**
   * Checks an upload id and its token before the body is read; on success,
   * the most bytes this part may have (so the body read can stop early).
   */
  checkMultipart(id: string, token: string | null, partNumber?: number): { ok: true; room: number } | StoreRefusal;
  /** Stores (or replaces) one part; the etag is the MD5 of its bytes, as S3 computes it. */
  putPart(id: string, token: string | null, partNumber: number, data: Buffer): PartResult;
  /** Assembles the listed parts into the file; on a refusal every part is kept for another try. */
  completeMultipart(id: string, token: string | null, parts: unknown): CompleteResult;
  get(id: string, fileName: string): StoredFile | undefined;
  clear(): void;
  /** Bytes held: stored files plus parts of unfinished multipart uploads. */
  readonly bytes: number;
}

function stored(contentType: string, data: Buffer, lifetimeS: number | null): StoredFile {
  return lifetimeS === null ? { contentType, data } : { contentType, data, expiresAt: Date.now() + lifetimeS * 1000 };
}

/** Keeps a file name URL-safe while staying recognisable. */
function safeName(name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^\.+/, '');
  return cleaned.slice(0, 120) || 'file';
}

const refuse = (status: number, detail: string): StoreRefusal => ({ ok: false, status, detail });

/** Etags are compared without the quotes HTTP puts around them. */
const bareEtag = (v: string) => v.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');

export function createFileStore(maxBytes: number, limits: FileStoreLimits = {}): FileStore {
  const maxPending = limits.maxPending ?? 10000;
  const maxPendingMultipart = limits.maxPendingMultipart ?? 100;
  const maxFileBytes = Math.min(limits.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES, maxBytes);
  const files = new Map<string, StoredFile>();
  const pending = new Map<string, PendingUpload>();
  const multiparts = new Map<string, PendingMultipart>();
  let bytes = 0;
  const key = (id: string, fileName: string) => `${id}/${fileName}`;

  /** Evicts completed files, oldest first, until `extra` more bytes fit; false if they cannot. */
  const makeRoom = (extra: number): boolean => {
    for (const [k, f] of files) {
      if (bytes + extra <= maxBytes) break;
      files.delete(k);
      bytes -= f.data.length;
    }
    return bytes + extra <= maxBytes;
  };

  const dropMultipart = (m: PendingMultipart) => {
    multiparts.delete(m.id);
    bytes -= m.bytes;
  };

  const lookup = (id: string, token: string | null): PendingMultipart | StoreRefusal => {
    const m = multiparts.get(id);
    if (!m) return refuse(404, 'Unknown or already completed multipart upload');
    if (token !== m.token) {
      return refuse(403, "Missing or wrong upload_token: keep the upload URL's query string when building part and complete URLs");
    }
    return m;
  };

  return {
    get bytes() {
      return bytes;
    },
    initiate(contentType, fileName, lifetimeS = null) {
      const id = randomBytes(12).toString('hex');
      const token = randomBytes(16).toString('hex');
      const name = safeName(fileName);
      pending.set(token, { id, fileName: name, contentType, lifetimeS });
      if (pending.size > maxPending) {
        const oldest = pending.keys().next().value;
        if (oldest !== undefined) pending.delete(oldest);
      }
      return { uploadPath: `v3.fal.media/files/upload/${token}`, filePath: `v3.fal.media/files/${id}/${name}` };
    },
    put(token, data, contentType) {
      const p = pending.get(token);
      if (!p) return refuse(404, 'Unknown or already used upload URL');
      pending.delete(token);
      if (data.length > maxBytes) return refuse(413, `File too large: the emulator keeps at most ${maxBytes} bytes of uploads`);
      if (!makeRoom(data.length)) {
        return refuse(507, `The emulator's upload store is full (${maxBytes} bytes, held by unfinished multipart uploads)`);
      }
      files.set(key(p.id, p.fileName), stored(contentType || p.contentType, data, p.lifetimeS));
      bytes += data.length;
      return { ok: true };
    },
    initiateMultipart(contentType, fileName, lifetimeS = null) {
      const id = randomBytes(12).toString('hex');
      const token = randomBytes(16).toString('hex');
      const name = safeName(fileName);
      multiparts.set(id, { id, token, fileName: name, contentType, lifetimeS, parts: new Map(), bytes: 0 });
      if (multiparts.size > maxPendingMultipart) {
        const oldest = multiparts.values().next().value;
        if (oldest !== undefined) dropMultipart(oldest);
      }
      return {
        uploadPath: `v3.fal.media/files/upload/multipart/${id}?upload_token=${token}`,
        filePath: `v3.fal.media/files/${id}/${name}`,
      };
    },
    checkMultipart(id, token, partNumber) {
      const m = lookup(id, token);
      if ('ok' in m) return m;
      const replaced = partNumber === undefined ? 0 : (m.parts.get(partNumber)?.data.length ?? 0);
      return { ok: true, room: Math.max(0, maxFileBytes - m.bytes + replaced) };
    },
    putPart(id, token, partNumber, data) {
      const m = lookup(id, token);
      if ('ok' in m) return m;
      const old = m.parts.get(partNumber);
      const delta = data.length - (old?.data.length ?? 0);
      if (m.bytes + delta > maxFileBytes) {
        return refuse(413, `File too large: the emulator keeps files of at most ${maxFileBytes} bytes`);
      }
      if (!makeRoom(delta)) {
        return refuse(
          507,
          `The emulator's upload store is full (${maxBytes} bytes, held by unfinished multipart uploads): complete them or reset the emulator`,
        );
      }
      // Parts may be sent again (a client retry): the last one wins, with its own etag.
      const etag = createHash('md5').update(data).digest('hex');
      m.parts.set(partNumber, { data, etag });
      m.bytes += delta;
      bytes += delta;
      return { ok: true, partNumber, etag };
    },
    completeMultipart(id, token, raw) {
      const m = lookup(id, token);
      if ('ok' in m) return m;
      const list = (raw as { parts?: unknown } | null)?.parts;
      if (!Array.isArray(list) || list.length === 0) return refuse(400, 'parts must be a non-empty list of {partNumber, etag}');
      const seen = new Set<number>();
      const chosen: Buffer[] = [];
      let previous = 0;
      for (const [i, entry] of list.entries()) {
        const e = (entry ?? {}) as { partNumber?: unknown; etag?: unknown };
        const n = e.partNumber;
        if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_PART_NUMBER) {
          return refuse(400, `parts[${i}].partNumber must be an integer from 1 to ${MAX_PART_NUMBER}`);
        }
        if (seen.has(n)) return refuse(400, `Part ${n} is listed twice`);
        seen.add(n);
        if (n !== previous + 1) {
          return refuse(400, `Parts must be listed in order from 1 with none missing: expected part ${previous + 1}, got ${n}`);
        }
        previous = n;
        if (typeof e.etag !== 'string' || e.etag.trim() === '') return refuse(400, `Part ${n} has no etag`);
        const part = m.parts.get(n);
        if (!part) return refuse(400, `Part ${n} was never uploaded`);
        if (bareEtag(e.etag) !== part.etag) return refuse(400, `Part ${n}: etag does not match the uploaded part`);
        chosen.push(part.data);
      }
      for (const n of m.parts.keys()) {
        if (!seen.has(n)) return refuse(400, `Part ${n} was uploaded but is not listed`);
      }
      const data = Buffer.concat(chosen);
      multiparts.delete(id);
      // The parts' bytes become the file's: the store total is unchanged.
      files.set(key(m.id, m.fileName), stored(m.contentType, data, m.lifetimeS));
      return { ok: true, filePath: `v3.fal.media/files/${m.id}/${m.fileName}`, bytes: data.length };
    },
    get(id, fileName) {
      const k = key(id, fileName);
      const file = files.get(k);
      if (file?.expiresAt !== undefined && file.expiresAt <= Date.now()) {
        files.delete(k);
        bytes -= file.data.length;
        return undefined;
      }
      return file;
    },
    clear() {
      files.clear();
      pending.clear();
      multiparts.clear();
      bytes = 0;
    },
  };
}
