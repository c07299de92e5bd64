import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { KeysStore } from './keys-store.js';

/** Who is calling, once their key checked out. */
export interface Principal {
  keyId: string;
  role: 'user' | 'admin';
  rpmLimit: number | null;
}

/**
 * Who is calling. Keys are long random strings, so a SHA-256 of the key is
 * enough to store and look up (a slow hash would only slow the hot path).
 * Database keys are cached for a short while: a disabled key stops working
 * on every process within `cacheTtlMs` (< 5 s).
 */

export function sha256Hex(s: string): string {
  return createHash('sha256').update(s, 'utf8').digest('hex');
}

function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && timingSafeEqual(x, y);
}

export interface AuthenticatorOptions {
  keys: KeysStore;
  staticKeys: string[];
  adminKey: string | undefined;
  /** Hash of the key generated at first start when no keys are configured. */
  generatedKeyHash: string | undefined;
  cacheTtlMs?: number;
  now?: () => number;
}

export function staticKeyId(hashHex: string): string {
  return `static-${hashHex.slice(0, 8)}`;
}

export function createAuthenticator(opts: AuthenticatorOptions): (token: string) => Promise<Principal | null> {
  const fixed: Array<{ hash: string; principal: Principal }> = [];
  for (const k of opts.staticKeys) fixed.push({ hash: sha256Hex(k), principal: { keyId: staticKeyId(sha256Hex(k)), role: 'user', rpmLimit: null } });
  if (opts.generatedKeyHash) fixed.push({ hash: opts.generatedKeyHash, principal: { keyId: staticKeyId(opts.generatedKeyHash), role: 'user', rpmLimit: null } });
  if (opts.adminKey) fixed.push({ hash: sha256Hex(opts.adminKey), principal: { keyId: 'admin-env', role: 'admin', rpmLimit: null } });

  const ttl = opts.cacheTtlMs ?? 2000;
  const now = opts.now ?? Date.now;
  const cache = new Map<string, { at: number; principal: Principal | null }>();
  const ensured = new Set<string>();
  const lookups = new Map<string, Promise<Principal | null>>();
  const lookup = async (hash: string): Promise<Principal | null> => {
    const rec = await opts.keys.findByHash(hash);
    const principal: Principal | null = rec && rec.enabled ? { keyId: rec.id, role: rec.role, rpmLimit: rec.rpmLimit } : null;
    if (cache.size > 10_000) cache.clear();
    cache.set(hash, { at: now(), principal });
    return principal;
  };

  return async (token) => {
    const hash = sha256Hex(token);
    let match: Principal | null = null;
    // Compare against every fixed key so timing does not reveal which matched.
    for (const f of fixed) if (sameHash(f.hash, hash)) match = f.principal;
    if (match) {
      if (!ensured.has(match.keyId)) {
        await opts.keys.ensureStatic({ id: match.keyId, keyHash: hash, role: match.role });
        ensured.add(match.keyId);
      }
      return match;
    }
    const hit = cache.get(hash);
    if (hit && now() - hit.at < ttl) return hit.principal;
    // One lookup per key at a time: the requests that find its entry expired together wait for the same answer.
    let pending = lookups.get(hash);
    if (!pending) {
      pending = lookup(hash).finally(() => lookups.delete(hash));
      lookups.set(hash, pending);
    }
    return pending;
  };
}

export interface GeneratedKey {
  /** Present only on the start that created it: shown once, never stored. */
  key?: string;
  sha256: string;
  createdAt: string;
  file: string;
}

/**
 * With no keys configured we never run an open door: the first start makes a
 * key, prints it once and keeps only its hash under DATA_DIR.
 */
export async function loadOrCreateGeneratedKey(dataDir: string): Promise<GeneratedKey> {
  const file = resolve(join(dataDir, 'generated-api-key.json'));
  try {
    const saved = JSON.parse(await readFile(file, 'utf8')) as { sha256?: unknown; created_at?: unknown };
    if (typeof saved.sha256 === 'string' && /^[0-9a-f]{64}$/.test(saved.sha256)) {
      return { sha256: saved.sha256, createdAt: String(saved.created_at), file };
    }
    throw new Error(`${file} is not a generated-key file; delete it to generate a new key`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = `sk-${randomBytes(32).toString('base64url')}`;
  const sha256 = sha256Hex(key);
  const createdAt = new Date().toISOString();
  await mkdir(dataDir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify({ sha256, created_at: createdAt }) + '\n', { mode: 0o600 });
  await rename(tmp, file);
  return { key, sha256, createdAt, file };
}
