/**
 * fal's CDN upload flow: `initiate` hands out a one-time upload URL and the
 * file's final URL; the client PUTs the bytes (without credentials: real
 * upload URLs are pre-signed); the file URL then serves them publicly.
 * Files live in memory, bounded in total, oldest evicted first.
 */
import { randomBytes } from 'node:crypto';

interface StoredFile {
  contentType: string;
  data: Buffer;
}

interface PendingUpload {
  id: string;
  fileName: string;
  contentType: string;
}

export interface UploadTicket {
  uploadPath: string;
  filePath: string;
}

export interface FileStore {
  initiate(contentType: string, fileName: string): UploadTicket;
  /** Stores bytes for an upload token; false if the token is unknown or used. */
  put(token: string, data: Buffer, contentType: string | undefined): boolean;
  get(id: string, fileName: string): StoredFile | undefined;
  clear(): void;
  readonly bytes: number;
}

/** Keeps a file name URL-safe while staying recognisable. */
function safeName(name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^\.+/, '');
  return cleaned.slice(0, 120) || 'file';
}

export function createFileStore(maxBytes: number, maxPending = 10000): FileStore {
  const files = new Map<string, StoredFile>();
  const pending = new Map<string, PendingUpload>();
  let bytes = 0;
  const key = (id: string, fileName: string) => `${id}/${fileName}`;
  return {
    get bytes() {
      return bytes;
    },
    initiate(contentType, fileName) {
      const id = randomBytes(12).toString('hex');
      const token = randomBytes(16).toString('hex');
      const name = safeName(fileName);
      pending.set(token, { id, fileName: name, contentType });
      if (pending.size > maxPending) {
        const oldest = pending.keys().next().value;
        if (oldest !== undefined) pending.delete(oldest);
      }
      return { uploadPath: `v3.fal.media/files/upload/${token}`, filePath: `v3.fal.media/files/${id}/${name}` };
    },
    put(token, data, contentType) {
      const p = pending.get(token);
      if (!p) return false;
      pending.delete(token);
      if (data.length > maxBytes) return false;
      files.set(key(p.id, p.fileName), { contentType: contentType || p.contentType, data });
      bytes += data.length;
      for (const [k, f] of files) {
        if (bytes <= maxBytes) break;
        files.delete(k);
        bytes -= f.data.length;
      }
      return true;
    },
    get(id, fileName) {
      return files.get(key(id, fileName));
    },
    clear() {
      files.clear();
      pending.clear();
      bytes = 0;
    },
  };
}
