import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { createFileUrls } from '../../../src/images/file-urls.js';
import { startTestService, TEST_KEY, type TestService } from '../../helpers/service.js';

/** GET /v1/files/...: the emulator's images from our origin, readable only through the URL the service signed. */

const SECRET = 'files-route-test-secret-0123456789abcdef';

async function generate(t: TestService): Promise<URL> {
  const res = await fetch(`${t.url}/v1/images/generations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'a signed fox', image_size: 'square' }),
  });
  assert.equal(res.status, 200);
  const body = (await res.json()) as { data: { url: string }[] };
  return new URL(body.data[0]!.url);
}

describe('GET /v1/files', () => {
  let a: TestService;
  let b: TestService;
  before(async () => {
    a = await startTestService({ FILE_URL_SECRET: SECRET, FILE_URL_TTL_S: '600' });
    // A second replica sharing the secret, and one with a secret of its own.
    b = await startTestService({ FILE_URL_SECRET: SECRET }, { use: a.emulator });
  });
  after(async () => {
    await b.close();
    await a.close();
  });

  it('serves the signed URL without an API key, to every replica holding the secret, cached until it expires', async () => {
    const url = await generate(a);
    assert.deepEqual([...url.searchParams.keys()].sort(), ['expires', 'signature', 'tenant']);
    const expires = Number(url.searchParams.get('expires'));
    assert.ok(Math.abs(expires - (Date.now() / 1000 + 600)) < 120, `expires in FILE_URL_TTL_S: ${expires}`);
    for (const origin of [a.url, b.url]) {
      const res = await fetch(`${origin}${url.pathname}${url.search}`);
      assert.equal(res.status, 200, origin);
      const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
      assert.deepEqual([meta.width, meta.height], [512, 512]);
      const maxAge = Number(/max-age=(\d+)/.exec(res.headers.get('cache-control') ?? '')?.[1]);
      assert.ok(maxAge > 0 && maxAge <= 600, `cache-control ${res.headers.get('cache-control')}`);
    }
  });

  it('answers 404 without touching fal for an unsigned, altered, expired or other-tenant URL', async () => {
    const url = await generate(a);
    const path = url.pathname.slice('/v1/files/'.length);
    const q = Object.fromEntries(url.searchParams);
    const expired = new URLSearchParams(createFileUrls({ secret: SECRET, ttlS: 60, now: () => Date.now() - 3_600_000 }).sign(path, q.tenant!));
    const otherSecret = new URLSearchParams(createFileUrls({ secret: `${SECRET}-other`, ttlS: 600 }).sign(path, q.tenant!));
    const crafted = url.pathname.replace(/emulated\/[^/.]+/, 'emulated/eyJ2IjoxLCJrIjoiYyIsInciOjQwOTYsImgiOjQwOTYsImYiOiJwbmcifQ');
    const cases: Record<string, string> = {
      unsigned: url.pathname,
      'another tenant': `${url.pathname}?${new URLSearchParams({ ...q, tenant: 'someone-else' })}`,
      'a later expiry': `${url.pathname}?${new URLSearchParams({ ...q, expires: String(Number(q.expires) + 3600) })}`,
      'another file': `${crafted}?${url.searchParams}`,
      expired: `${url.pathname}?${expired}`,
      'another secret': `${url.pathname}?${otherSecret}`,
    };
    const before = a.emulator.stats().files;
    for (const [name, target] of Object.entries(cases)) {
      const res = await fetch(`${a.url}${target}`);
      assert.equal(res.status, 404, name);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'not_found', name);
    }
    assert.equal(a.emulator.stats().files, before, 'no refused URL reached the emulator');
  });

  it('needs FILE_URL_SECRET when replicas share PostgreSQL and serve images from their origin', async () => {
    const { loadConfig, ConfigError } = await import('../../../src/config.js');
    assert.throws(() => loadConfig({ DATABASE_URL: 'postgres://u@db/x', FAL_BASE_URL: 'http://127.0.0.1:9', FAL_KEY: 'k' }), (e: unknown) => e instanceof ConfigError && /FILE_URL_SECRET/.test(e.message));
    assert.throws(() => loadConfig({ FILE_URL_SECRET: 'short' }), (e: unknown) => e instanceof ConfigError && /FILE_URL_SECRET must be at least 32/.test(e.message));
    assert.doesNotThrow(() => loadConfig({ DATABASE_URL: 'postgres://u@db/x', FAL_KEY: 'k' }), 'real fal: no image is served from our origin');
  });
});
