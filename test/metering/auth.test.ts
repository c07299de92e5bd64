import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createAuthenticator, sha256Hex } from '../../src/metering/auth.js';
import type { KeysStore } from '../../src/metering/keys-store.js';

it('looks an issued key up once for the requests that find its cache entry missing or expired together', async () => {
  let lookups = 0;
  let t = 0;
  const keys = {
    async findByHash(hash: string) {
      lookups++;
      await new Promise((r) => setTimeout(r, 5));
      return hash === sha256Hex('sk-good') ? { id: 'key_1', role: 'user', rpmLimit: null, enabled: true } : null;
    },
  } as unknown as KeysStore;
  const auth = createAuthenticator({ keys, staticKeys: [], adminKey: undefined, generatedKeyHash: undefined, cacheTtlMs: 2000, now: () => t });
  const first = await Promise.all(Array.from({ length: 20 }, () => auth('sk-good')));
  assert.equal(lookups, 1);
  assert.ok(first.every((p) => p?.keyId === 'key_1'));
  t = 1999;
  await auth('sk-good');
  assert.equal(lookups, 1);
  t = 2000;
  await Promise.all(Array.from({ length: 20 }, () => auth('sk-good')));
  assert.equal(lookups, 2);
  assert.deepEqual(await Promise.all([auth('sk-bad'), auth('sk-bad')]), [null, null]);
  assert.equal(lookups, 3);
});
