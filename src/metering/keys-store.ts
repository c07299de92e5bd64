/**
 * API keys. A key is 32 random bytes, so a plain SHA-256 of it is enough to
 * store (nothing to brute-force, and no slow hash on every request); the
 * plaintext exists only in the answer to `create`.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { sql, type Kysely, type Selectable, type Transaction, type Updateable } from 'kysely';
import type { Database } from '../db/database.js';
import type { ApiKeysTable, DB, KeyKind, KeyRole, RequestStatus } from '../db/schema.js';
import { systemClock, toBigInt, toIsoTimestamp, toNullableBigInt, toNullableNumber, type Clock } from '../db/values.js';

export interface KeyRecord {
  id: string;
  /** `static`: configured in the environment; the row only carries its metering. */
  kind: KeyKind;
  name: string;
  role: KeyRole;
  enabled: boolean;
  /** Lifetime budget; null means unlimited. */
  budgetMicros: bigint | null;
  /**
   * Charges of the key's settled requests, summed from their rows (the key
   * row's own counters only enforce budgets: docs/LEDGER-COST.md). Not read
   * by `findByKey`/`findByHash`, which authenticate on the request path: 0 there.
   */
  spentMicros: bigint;
  /** Held by requests in flight, summed from their rows (0 from `findByKey`/`findByHash`). */
  reservedMicros: bigint;
  rpmLimit: number | null;
  createdAt: string;
  updatedAt: string;
}

export interface CreateKeyInput {
  name: string;
  role?: KeyRole | undefined;
  budgetMicros?: bigint | null | undefined;
  rpmLimit?: number | null | undefined;
}

export interface KeyPatch {
  name?: string | undefined;
  enabled?: boolean | undefined;
  /** null removes the budget. */
  budgetMicros?: bigint | null | undefined;
  rpmLimit?: number | null | undefined;
  role?: KeyRole | undefined;
}

export interface KeysStore {
  /** Returns the only copy of the plaintext key the service will ever hold. */
  create(input: CreateKeyInput): Promise<{ record: KeyRecord; key: string }>;
  /**
   * The issued key matching a presented key, enabled or not (the caller
   * decides); null if none. Static rows never match: static keys
   * authenticate from the environment, so dropping one there revokes it.
   */
  findByKey(key: string): Promise<KeyRecord | null>;
  /** As `findByKey`, for a caller that has already hashed the key (SHA-256 hex). */
  findByHash(keyHash: string): Promise<KeyRecord | null>;
  list(): Promise<KeyRecord[]>;
  get(id: string): Promise<KeyRecord | null>;
  update(id: string, patch: KeyPatch): Promise<KeyRecord | null>;
  disable(id: string): Promise<KeyRecord | null>;
  /**
   * The metering row for a key configured in the environment (`API_KEYS`,
   * `ADMIN_API_KEY`, a generated key of which only the hash is kept): by
   * default id `static-` + the first 8 hex characters of its SHA-256, no
   * budget. Idempotent and safe from several processes at once. A spec with
   * an explicit id follows key rotation (the stored hash is replaced); the
   * role always follows the environment.
   */
  ensureStatic(key: string | StaticKeySpec, options?: { role?: KeyRole | undefined; name?: string | undefined }): Promise<KeyRecord>;
}

export interface StaticKeySpec {
  keyHash: string;
  id?: string | undefined;
  role?: KeyRole | undefined;
  name?: string | undefined;
}

export const KEY_PREFIX = 'sk-';

export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

export function createKeysStore(database: Database, options: { clock?: Clock | undefined } = {}): KeysStore {
  const db = database.db;
  const clock = options.clock ?? systemClock;
  const now = (): string => toIsoTimestamp(clock());

  async function get(id: string): Promise<KeyRecord | null> {
    const row = await db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? (await withUsage(db, [toKey(row)], id))[0]! : null;
  }

  async function update(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    const set: Updateable<ApiKeysTable> = { updated_at: now() };
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.enabled !== undefined) set.enabled = patch.enabled ? 1 : 0;
    if (patch.budgetMicros !== undefined) set.budget_micros = checkBudget(patch.budgetMicros);
    if (patch.rpmLimit !== undefined) set.rpm_limit = checkRpm(patch.rpmLimit);
    if (patch.role !== undefined) set.role = checkRole(patch.role);
    const changed = await db.transaction().execute(async (trx) => {
      const before = await trx.selectFrom('api_keys').select('budget_micros').where('id', '=', id).executeTakeFirst();
      const row = await trx.updateTable('api_keys').set(set).where('id', '=', id).returningAll().executeTakeFirst();
      if (row && before?.budget_micros === null && row.budget_micros !== null) return countSpendForBudget(trx, id);
      return row;
    });
    return changed ? (await withUsage(db, [toKey(changed)], id))[0]! : null;
  }

  async function findByHash(keyHash: string): Promise<KeyRecord | null> {
    if (!SHA256_HEX.test(keyHash)) return null;
    const row = await db
      .selectFrom('api_keys')
      .selectAll()
      .where('key_hash', '=', keyHash)
      .where('kind', '=', 'issued')
      .executeTakeFirst();
    if (!row) return null;
    // The index lookup already matched; this re-check costs nothing and keeps
    // the final comparison independent of where two hashes differ.
    const stored = Buffer.from(row.key_hash, 'hex');
    const presented = Buffer.from(keyHash, 'hex');
    if (stored.length !== presented.length || !timingSafeEqual(stored, presented)) return null;
    return toKey(row);
  }

  return {
    create: (input) => create(db, now(), input),

    findByKey(key) {
      return findByHash(hashKey(key));
    },

    findByHash,

    async list() {
      const rows = await db.selectFrom('api_keys').selectAll().orderBy('created_at').orderBy('id').execute();
      return withUsage(db, rows.map(toKey));
    },

    get,
    update,

    disable(id) {
      return update(id, { enabled: false });
    },

    ensureStatic: (keyOrSpec, opts = {}) => ensureStatic(db, now(), keyOrSpec, opts),
  };
}

/** `KeysStore.create`: the plaintext exists only in this answer. */
async function create(db: Kysely<DB>, at: string, input: CreateKeyInput): Promise<{ record: KeyRecord; key: string }> {
  const key = KEY_PREFIX + randomBytes(32).toString('base64url');
  const row = await db
    .insertInto('api_keys')
    .values({
      id: `key_${randomBytes(8).toString('hex')}`,
      name: input.name,
      key_hash: hashKey(key),
      role: checkRole(input.role ?? 'user'),
      budget_micros: checkBudget(input.budgetMicros ?? null),
      spent_micros: 0n,
      reserved_micros: 0n,
      rpm_limit: checkRpm(input.rpmLimit ?? null),
      created_at: at,
      updated_at: at,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return { record: toKey(row), key };
}

/** `KeysStore.ensureStatic`: each statement is idempotent on its own, so several processes may run it at once. */
async function ensureStatic(
  db: Kysely<DB>,
  at: string,
  keyOrSpec: string | StaticKeySpec,
  opts: { role?: KeyRole | undefined; name?: string | undefined },
): Promise<KeyRecord> {
  const spec: StaticKeySpec = typeof keyOrSpec === 'string' ? { keyHash: hashKey(keyOrSpec) } : keyOrSpec;
  const hash = spec.keyHash.toLowerCase();
  if (!SHA256_HEX.test(hash)) throw new RangeError('keyHash must be a SHA-256 hex digest');
  const derivedId = `static-${hash.slice(0, 8)}`;
  const id = spec.id ?? derivedId;
  const role = checkRole(spec.role ?? opts.role ?? 'user');
  await db
    .insertInto('api_keys')
    .values({
      id,
      kind: 'static',
      name: spec.name ?? opts.name ?? (role === 'admin' ? 'static admin key' : 'static key'),
      key_hash: hash,
      role,
      budget_micros: null,
      rpm_limit: null,
      created_at: at,
      updated_at: at,
    })
    .onConflict((oc) => oc.column('id').doNothing())
    .execute();
  const row = await db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  if (row.kind !== 'static') throw new Error(`key id ${id} belongs to an issued key, not a static one`);
  if (row.key_hash !== hash && id === derivedId) {
    throw new Error(`two configured keys share the id ${id}; replace one of them`);
  }
  if (row.key_hash === hash && row.role === role) return toKey(row);
  const changed = await db
    .updateTable('api_keys')
    .set({ key_hash: hash, role, updated_at: at })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirstOrThrow();
  return toKey(changed);
}

/**
 * The key's usage from its requests' rows: the one record of it for every
 * key, whichever funds its holds (a key without a budget writes no shared
 * counter). `only`: one key's (an index range), else every key's.
 */
async function withUsage(db: Kysely<DB>, keys: KeyRecord[], only?: string): Promise<KeyRecord[]> {
  const sums = (status: RequestStatus[], column: 'charge_micros' | 'reserved_micros') => {
    let q = db.selectFrom('requests').select(['key_id', sql<bigint>`cast(coalesce(sum(${sql.ref(column)}), 0) as bigint)`.as('micros')]).where('status', 'in', status);
    if (only !== undefined) q = q.where('key_id', '=', only);
    return q.groupBy('key_id').execute();
  };
  const [spent, held] = await Promise.all([sums(['settled'], 'charge_micros'), sums(['reserved', 'submitted'], 'reserved_micros')]);
  const by = (rows: Array<{ key_id: string; micros: bigint }>) => new Map(rows.map((r) => [r.key_id, toBigInt(r.micros)]));
  const spentBy = by(spent);
  const heldBy = by(held);
  return keys.map((k) => ({ ...k, spentMicros: spentBy.get(k.id) ?? 0n, reservedMicros: heldBy.get(k.id) ?? 0n }));
}

/**
 * A key given a budget sets its budget counter from its requests' rows: the
 * charges settled on the key row or on a returned slice, every charge
 * without a budget, and the holds of requests in flight without a budget at
 * their maximum (their settles write no counter). Charges of slices not yet
 * returned are left to the slice's return, so each is counted once. The key
 * row is locked first (the UPDATE before this), so a settle or slice return
 * that counts on it commits wholly before or after this sum.
 */
async function countSpendForBudget(trx: Transaction<DB>, id: string): Promise<Selectable<ApiKeysTable> | undefined> {
  const unreturned = trx.selectFrom('budget_slices').select('budget_slices.id');
  const counted = await trx
    .selectFrom('requests')
    .select(
      sql<bigint>`cast(coalesce(sum(case
        when status = 'settled' and (funded_by <> 'slice' or slice_id not in (${unreturned})) then charge_micros
        when status in ('reserved', 'submitted') and funded_by = 'none' then reserved_micros
        else 0 end), 0) as bigint)`.as('spent'),
    )
    .where('key_id', '=', id)
    .executeTakeFirstOrThrow();
  return trx.updateTable('api_keys').set({ spent_micros: toBigInt(counted.spent) }).where('id', '=', id).returningAll().executeTakeFirst();
}

function checkRole(role: KeyRole): KeyRole {
  if (role !== 'user' && role !== 'admin') throw new RangeError(`role must be "user" or "admin", not ${JSON.stringify(role)}`);
  return role;
}

function checkBudget(budget: bigint | null): bigint | null {
  if (budget !== null && budget < 0n) throw new RangeError('budget must not be negative');
  return budget;
}

function checkRpm(rpm: number | null): number | null {
  if (rpm !== null && (!Number.isSafeInteger(rpm) || rpm < 0)) throw new RangeError('rpm limit must be a non-negative integer');
  return rpm;
}

function toKey(row: Selectable<ApiKeysTable>): KeyRecord {
  return {
    id: row.id,
    kind: row.kind,
    name: row.name,
    role: row.role,
    enabled: toBigInt(row.enabled) === 1n,
    budgetMicros: toNullableBigInt(row.budget_micros),
    spentMicros: toBigInt(row.spent_micros),
    reservedMicros: toBigInt(row.reserved_micros),
    rpmLimit: toNullableNumber(row.rpm_limit),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
