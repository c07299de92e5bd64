/**
 * LoRA weights that live on this server. A LoRA `path` of the form
 * `/absolute/path` or `./relative/path` (relative to LORA_DIR) names a file
 * under LORA_DIR; fal cannot read our disk, so the file is uploaded to fal
 * storage and its fal URL is what fal receives. Uploads are keyed by the
 * content's SHA-256, kept in memory and in DATA_DIR, so the same weights are
 * uploaded once per fal target, across requests and restarts.
 *
 * Containment is decided on the real path (`realpath`), so neither `..` (the
 * schema already refuses it) nor a symlink inside LORA_DIR can reach a file
 * outside it. A path that is lexically outside LORA_DIR is refused before the
 * filesystem is touched, so callers cannot probe which files exist elsewhere.
 *
 * fal's storage expires files (its media lifetime), so each upload asks for
 * a lifetime of its own (`lifetimeS`, LORA_UPLOAD_TTL_S) and a cached URL is
 * used only while it will outlive the job it goes into (`reuseMarginMs`:
 * fal reads the weights when the job starts, up to our request deadline
 * after the submit); past that the file is uploaded again. Files over 90 MB
 * go up in parts (the client's multipart storage API).
 *
 * https URLs and Hugging Face repo ids pass through untouched.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, openAsBlob } from 'node:fs';
import { mkdir, readFile, realpath, rename, stat, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { basename, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { Logger } from 'pino';
import { ApiError, invalidRequest, rateLimited, upstreamError, upstreamTimeout } from '../errors.js';
import { FalCallError, type FalGateway } from '../fal/gateway.js';
import type { LoraResolver } from './ports.js';

export interface LoraResolverOptions {
  /** LORA_DIR (absolute); undefined refuses every local path. */
  loraDir: string | undefined;
  /** LORA_MAX_BYTES: larger files are refused (400) before anything is read. */
  maxBytes?: number | undefined;
  /** Where the upload cache is persisted (DATA_DIR). */
  dataDir: string;
  fal: Pick<FalGateway, 'upload'>;
  /**
   * Which fal the URLs belong to (FAL_BASE_URL, or "fal" for real fal): a
   * URL stored by one upstream is never handed to another.
   */
  target: string;
  logger: Logger;
  /** Longest one upload may take. */
  uploadTimeoutMs?: number;
  /** Seconds fal keeps an uploaded file (LORA_UPLOAD_TTL_S); default 7 days. */
  lifetimeS?: number;
  /** A cached URL is uploaded again once it has less than this left; default 6 minutes (the default request deadline and a minute). */
  reuseMarginMs?: number;
  /** The clock, for tests. */
  now?: () => number;
}

export type { LoraResolver } from './ports.js';

interface CacheEntry {
  target: string;
  sha256: string;
  url: string;
  bytes: number;
  uploaded_at: string;
  /** When fal deletes the file; entries without it (older caches) are uploaded again. */
  expires_at?: string;
}

const CACHE_FILE = 'lora-uploads.json';

/** A local path: the only forms the schema lets through that start with "/" or "./". */
export function isLocalLoraPath(path: string): boolean {
  return path.startsWith('/') || path.startsWith('./');
}

function inside(root: string, candidate: string): boolean {
  const rel = relative(root, candidate);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

export function createLoraResolver(opts: LoraResolverOptions): LoraResolver {
  const cacheFile = join(opts.dataDir, CACHE_FILE);
  const uploadTimeoutMs = opts.uploadTimeoutMs ?? 300_000;
  const maxBytes = opts.maxBytes ?? 2 * 1024 ** 3;
  const lifetimeS = opts.lifetimeS ?? 7 * 86_400;
  const reuseMarginMs = opts.reuseMarginMs ?? 360_000;
  const now = opts.now ?? Date.now;
  const stats = { uploads: 0, cacheHits: 0 };
  /** sha256 → fal URL for this target, and when fal deletes it (ms since epoch). */
  const urls = new Map<string, { url: string; expiresAt: number }>();
  const usable = (known: { expiresAt: number } | undefined): known is { url: string; expiresAt: number } => known !== undefined && known.expiresAt - reuseMarginMs > now();
  /** Every entry on disk, other targets' included, so a rewrite keeps them. */
  let entries: CacheEntry[] = [];
  let loaded: Promise<void> | undefined;
  const uploading = new Map<string, Promise<string>>();
  /** Real path + inode + size + mtime → sha256, so an unchanged file is not re-read per request. */
  const hashes = new Map<string, string>();
  let rootReal: Promise<string> | undefined;
  let writing: Promise<void> = Promise.resolve();

  async function readCache(): Promise<CacheEntry[]> {
    let text: string;
    try {
      text = await readFile(cacheFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') opts.logger.warn({ err: { message: (err as Error).message } }, 'LoRA upload cache unreadable; files will be uploaded again');
      return [];
    }
    try {
      const parsed = JSON.parse(text) as { entries?: unknown };
      return (Array.isArray(parsed.entries) ? parsed.entries : []).filter(
        (e): e is CacheEntry => typeof e?.target === 'string' && typeof e?.sha256 === 'string' && typeof e?.url === 'string',
      );
    } catch {
      opts.logger.warn('LoRA upload cache is not valid JSON; files will be uploaded again');
      return [];
    }
  }

  function load(): Promise<void> {
    loaded ??= (async () => {
      entries = await readCache();
      for (const e of entries) {
        const expiresAt = e.expires_at === undefined ? NaN : Date.parse(e.expires_at);
        if (e.target === opts.target && Number.isFinite(expiresAt)) urls.set(e.sha256, { url: e.url, expiresAt });
      }
    })();
    return loaded;
  }

  function persist(entry: CacheEntry): Promise<void> {
    // One writer at a time; each write is a temp file renamed over the old
    // one, so a crash mid-write leaves the previous cache, never half of one.
    writing = writing.then(async () => {
      try {
        // Re-read first: another process sharing DATA_DIR may have added entries.
        const merged = new Map([...(await readCache()), ...entries, entry].map((e) => [`${e.target}\0${e.sha256}`, e]));
        entries = [...merged.values()];
        await mkdir(opts.dataDir, { recursive: true });
        const tmp = `${cacheFile}.${randomBytes(6).toString('hex')}.tmp`;
        await writeFile(tmp, `${JSON.stringify({ entries }, null, 2)}\n`, { mode: 0o600 });
        await rename(tmp, cacheFile);
      } catch (err) {
        // The upload succeeded; only the restart saving is lost.
        opts.logger.warn({ err: { message: (err as Error).message } }, 'LoRA upload cache could not be saved');
      }
    });
    return writing;
  }

  const refuse = (i: number, why: string): ApiError => invalidRequest(`loras[${i}].path: ${why}`, 'loras');

  /** The real path of a local LoRA file, or a 400 saying why not. */
  async function locate(path: string, i: number): Promise<string> {
    if (!opts.loraDir) {
      throw refuse(i, 'local files are not enabled on this server (LORA_DIR is not set); send an https:// URL or a Hugging Face repo id');
    }
    const root = opts.loraDir;
    rootReal ??= realpath(root);
    let realRoot: string;
    try {
      realRoot = await rootReal;
    } catch (err) {
      rootReal = undefined;
      throw new Error(`LORA_DIR cannot be resolved: ${(err as Error).message}`);
    }
    const candidate = path.startsWith('./') ? resolve(realRoot, path) : resolve(path);
    if (!inside(root, candidate) && !inside(realRoot, candidate)) {
      throw refuse(i, 'local files must be under this server\'s LORA_DIR (give "/" + a path under it, or "./" + a path relative to it)');
    }
    let real: string;
    try {
      real = await realpath(candidate);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw refuse(i, code === 'ENOENT' || code === 'ENOTDIR' ? 'no such file under LORA_DIR' : 'the file cannot be read');
    }
    if (!inside(realRoot, real)) throw refuse(i, 'the file resolves (through a symbolic link) to a place outside LORA_DIR');
    return real;
  }

  async function urlFor(real: string, i: number, signal: AbortSignal | undefined): Promise<string> {
    let info;
    try {
      info = await stat(real);
    } catch {
      throw refuse(i, 'the file cannot be read');
    }
    if (!info.isFile()) throw refuse(i, 'not a regular file');
    if (info.size > maxBytes) throw refuse(i, `the file is ${info.size} bytes; this server uploads LoRA files of at most ${maxBytes} bytes (LORA_MAX_BYTES)`);
    const statKey = `${real}\0${info.dev}:${info.ino}:${info.size}:${info.mtimeMs}`;
    let sha = hashes.get(statKey);
    if (sha === undefined) {
      // Streamed: weights run to gigabytes, and after a restart each file is
      // hashed once just to find its cached URL.
      const hash = createHash('sha256');
      try {
        await pipeline(createReadStream(real), hash);
      } catch {
        throw refuse(i, 'the file cannot be read');
      }
      sha = hash.digest('hex');
      hashes.set(statKey, sha);
    }
    await load();
    const known = urls.get(sha);
    if (usable(known)) {
      stats.cacheHits++;
      return known.url;
    }
    const pending = uploading.get(sha);
    if (pending) {
      stats.cacheHits++;
      return pending;
    }
    const hash = sha;
    const bytes = info.size;
    const upload = (async () => {
      const timeout = AbortSignal.timeout(uploadTimeoutMs);
      // Counted from before the upload: fal's clock starts at or after it.
      const started = now();
      // A Blob backed by the file: the upload streams it from disk, never holding it whole.
      const url = await opts.fal.upload(await openAsBlob(real), 'application/octet-stream', basename(real), {
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        lifetimeS,
      });
      stats.uploads++;
      const expiresAt = started + lifetimeS * 1000;
      urls.set(hash, { url, expiresAt });
      // The URL is a capability to the weights: it is not logged.
      opts.logger.info({ sha256: hash, bytes, file: basename(real) }, 'LoRA file uploaded to fal storage');
      await persist({ target: opts.target, sha256: hash, url, bytes, uploaded_at: new Date(started).toISOString(), expires_at: new Date(expiresAt).toISOString() });
      return url;
    })()
      .catch((err: unknown) => {
        throw uploadFailed(err);
      })
      .finally(() => uploading.delete(hash));
    // Concurrent requests for the same weights wait for this one upload.
    uploading.set(hash, upload);
    return upload;
  }

  return {
    stats,
    async resolve(falInput, signal) {
      const loras = falInput['loras'];
      if (!Array.isArray(loras) || !loras.some((l) => isLocalLoraPath(String((l as { path?: unknown })?.path ?? '')))) return falInput;
      const items = loras as Array<Record<string, unknown> & { path: string }>;
      // Every path is checked before anything is uploaded, so a request with
      // one bad path costs no upload at all; in order, so the error names the first.
      const located: Array<string | undefined> = [];
      for (const [i, l] of items.entries()) located.push(isLocalLoraPath(l.path) ? await locate(l.path, i) : undefined);
      const resolved = await Promise.all(
        items.map(async (l, i) => {
          const real = located[i];
          return real === undefined ? l : { ...l, path: await urlFor(real, i, signal) };
        }),
      );
      return { ...falInput, loras: resolved };
    },
  };
}

/** A failed upload to fal storage, as the caller sees it: no fal job exists yet, nothing is charged. `what`: "the LoRA file", "the image". */
export function uploadFailed(err: unknown, what = 'the LoRA file'): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof FalCallError) {
    if (err.kind === 'aborted') return upstreamTimeout(`Uploading ${what} to the image provider did not finish in time.`);
    if (err.kind === 'http' && err.status === 429) {
      return rateLimited('The image provider is rate limiting uploads. Retry after the indicated delay.', err.retryAfterS ?? 1, 'upstream_rate_limited');
    }
  }
  return upstreamError(`${what[0]!.toUpperCase()}${what.slice(1)} could not be uploaded to the image provider.`, { code: 'upstream_upload_failed', cause: err });
}
