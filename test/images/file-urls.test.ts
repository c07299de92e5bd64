import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFileUrls, loadOrCreateFileUrlSecret } from '../../src/images/file-urls.js';

const SECRET = 'a-secret-of-at-least-thirty-two-characters';
const PATH = 'v3.fal.media/files/emulated/abc.png';
const query = (qs: string) => Object.fromEntries(new URLSearchParams(qs));

describe('file-urls', () => {
  it('verifies what it signed: the tenant and the expiry', () => {
    let now = 1_700_000_000_000;
    const urls = createFileUrls({ secret: SECRET, ttlS: 3600, now: () => now });
    const qs = urls.sign(PATH, 'key_a');
    assert.deepEqual(urls.verify(PATH, query(qs)), { tenant: 'key_a', expiresAt: 1_700_003_600 });
    now += 3599_000;
    assert.ok(urls.verify(PATH, query(qs)), 'still valid a second before expiry');
    now += 1000;
    assert.equal(urls.verify(PATH, query(qs)), null, 'expired');
  });

  it('refuses every alteration: path, tenant, expiry, signature, another secret, missing or repeated parts', () => {
    const urls = createFileUrls({ secret: SECRET, ttlS: 3600 });
    const q = query(urls.sign(PATH, 'key_a'));
    assert.equal(urls.verify(`${PATH}x`, q), null);
    assert.equal(urls.verify(PATH, { ...q, tenant: 'key_b' }), null);
    assert.equal(urls.verify(PATH, { ...q, expires: String(Number(q.expires) + 1) }), null);
    const sig = q.signature!;
    // Every other spelling of the last character, those that decode to the same bytes included.
    for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_') {
      if (c !== sig.at(-1)) assert.equal(urls.verify(PATH, { ...q, signature: `${sig.slice(0, -1)}${c}` }), null, `last character ${c}`);
    }
    assert.equal(urls.verify(PATH, { ...q, signature: `${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}` }), null);
    assert.equal(createFileUrls({ secret: `${SECRET}!`, ttlS: 3600 }).verify(PATH, q), null);
    for (const k of ['tenant', 'expires', 'signature']) {
      const partial: Record<string, unknown> = { ...q };
      delete partial[k];
      assert.equal(urls.verify(PATH, partial), null, `without ${k}`);
      assert.equal(urls.verify(PATH, { ...q, [k]: [q[k], q[k]] }), null, `${k} twice`);
    }
    assert.equal(urls.verify(PATH, {}), null);
  });

  it('keeps one secret under DATA_DIR (mode 0600) across restarts and concurrent starts', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gw-file-urls-'));
    try {
      const [a, b] = await Promise.all([loadOrCreateFileUrlSecret(dir), loadOrCreateFileUrlSecret(dir)]);
      assert.equal(a.length, 32);
      assert.deepEqual(a, b);
      assert.deepEqual(await loadOrCreateFileUrlSecret(dir), a);
      assert.equal((await stat(join(dir, 'file-url-secret'))).mode & 0o777, 0o600);
      assert.match(await readFile(join(dir, 'file-url-secret'), 'utf8'), /^[A-Za-z0-9_-]{43}\n$/);
      await writeFile(join(dir, 'file-url-secret'), 'not a secret\n');
      await assert.rejects(loadOrCreateFileUrlSecret(dir), /does not hold a file URL secret/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
