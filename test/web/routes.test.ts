import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import request from 'supertest';
import { startTestService, type TestService } from '../helpers/service.js';

/**
 * The pages and files behind them, over plain HTTP (the browser suite,
 * pages.test.ts, checks what a person sees). These run without Chromium.
 */

const root = new URL('../../', import.meta.url);
const PAGES = ['/', '/usage', '/docs'];

function assetsOf(html: string): string[] {
  return [...html.matchAll(/<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"/g)].map((m) => m[1]!).filter((u) => u.startsWith('/'));
}

function directives(header: unknown): Record<string, string> {
  return Object.fromEntries(
    String(header)
      .split(';')
      .map((d) => d.trim().split(/\s+/))
      .map(([name, ...values]) => [name!, values.join(' ')]),
  );
}

describe('web pages and files', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  for (const path of PAGES) {
    it(`${path}: HTML without a key, under a page CSP that allows only this origin's scripts`, async () => {
      const res = await request(t.url).get(path);
      assert.equal(res.status, 200);
      assert.match(String(res.headers['content-type']), /^text\/html/);
      const csp = directives(res.headers['content-security-policy']);
      assert.equal(csp['default-src'], "'self'");
      assert.equal(csp['script-src'], "'self'");
      assert.equal(csp['frame-ancestors'], "'self'");
      assert.equal(csp['img-src'], "'self' data: https:");
      assert.equal(csp['style-src'], "'self' 'unsafe-inline'");
      assert.equal(csp['font-src'], "'self' data:");
      // Over plain http this would send the page's own scripts to https and leave it blank.
      assert.equal(csp['upgrade-insecure-requests'], undefined);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      assert.doesNotMatch(res.text, /<script>|\son[a-z]+=/i, 'no inline script or handler (the CSP would block it)');

      const assets = assetsOf(res.text);
      assert.ok(assets.length >= 2, `${path} loads its assets: ${assets.join(', ')}`);
      for (const asset of assets) {
        const a = await request(t.url).get(asset);
        assert.equal(a.status, 200, asset);
        assert.match(String(a.headers['content-type']), asset.endsWith('.css') ? /^text\/css/ : /javascript/, asset);
      }
    });
  }

  it('the API keeps helmet’s default policy', async () => {
    const csp = directives((await request(t.url).get('/healthz')).headers['content-security-policy']);
    assert.equal(csp['upgrade-insecure-requests'], '');
    assert.equal(csp['img-src'], "'self' data:");
  });

  it('/openapi.yaml is the file, raw', async () => {
    const res = await request(t.url).get('/openapi.yaml').buffer(true).parse((r, cb) => {
      let text = '';
      r.setEncoding('utf8');
      r.on('data', (c: string) => (text += c));
      r.on('end', () => cb(null, text));
    });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^application\/yaml/);
    assert.equal(res.body, readFileSync(new URL('openapi.yaml', root), 'utf8'));
  });

  it('every ./schemas/*.json openapi.yaml refers to is served as the file', async () => {
    const yaml = readFileSync(new URL('openapi.yaml', root), 'utf8');
    const files = [...new Set([...yaml.matchAll(/\.\/schemas\/([a-z0-9.-]+\.json)/g)].map((m) => m[1]!))];
    assert.ok(files.length >= 10, `found ${files.length}`);
    for (const file of files) {
      const res = await request(t.url).get(`/schemas/${file}`);
      assert.equal(res.status, 200, file);
      assert.match(String(res.headers['content-type']), /^application\/json/, file);
      assert.deepEqual(res.body, JSON.parse(readFileSync(new URL(`schemas/${file}`, root), 'utf8')), file);
    }
  });

  it('serves only the files it lists: anything else is the JSON 404', async () => {
    for (const path of [
      '/web/nope.js',
      '/web/playground.html',
      '/web/..%2Fhttp%2Froutes%2Fweb.ts',
      '/docs/assets/index.html',
      '/docs/assets/swagger-initializer.js',
      '/schemas/..%2Fpackage.json',
      '/schemas/nope.json',
      '/openapi.yml',
    ]) {
      const res = await request(t.url).get(path);
      assert.equal(res.status, 404, path);
      assert.equal(res.body.error?.type, 'invalid_request_error', path);
    }
  });
});
