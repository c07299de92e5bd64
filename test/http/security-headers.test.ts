import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/** helmet's headers on every kind of answer; CORS only for the origins listed in CORS_ORIGINS. */

function assertSecurityHeaders(res: request.Response, what: string): void {
  const h = res.headers;
  assert.match(String(h['content-security-policy']), /default-src 'self'/, `${what}: content-security-policy`);
  assert.match(String(h['content-security-policy']), /frame-ancestors 'self'/, what);
  assert.match(String(h['strict-transport-security']), /max-age=\d+/, `${what}: strict-transport-security`);
  assert.equal(h['x-content-type-options'], 'nosniff', what);
  assert.equal(h['x-frame-options'], 'SAMEORIGIN', what);
  assert.equal(h['referrer-policy'], 'no-referrer', what);
  assert.equal(h['cross-origin-opener-policy'], 'same-origin', what);
  // Images are fetched cross-origin by design (the files route), so CORP is relaxed on purpose.
  assert.equal(h['cross-origin-resource-policy'], 'cross-origin', what);
  assert.equal(h['x-dns-prefetch-control'], 'off', what);
  assert.equal(h['x-permitted-cross-domain-policies'], 'none', what);
  assert.equal(h['x-powered-by'], undefined, `${what}: no x-powered-by`);
  assert.ok(h['x-request-id'], `${what}: x-request-id`);
}

const body = { model: 'alibaba/z-image-turbo', prompt: 'a lantern', image_size: 'square' };
const ORIGIN = 'https://app.example.com';

describe('security headers and CORS', () => {
  let t: TestService;
  let withCors: TestService;
  before(async () => {
    [t, withCors] = await Promise.all([startTestService(), startTestService({ CORS_ORIGINS: `${ORIGIN}, https://admin.example.com` })]);
  });
  after(async () => {
    await Promise.all([t.close(), withCors.close()]);
  });

  it('are on a success, an error, a 404 and a health check', async () => {
    const ok = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(ok.status, 200);
    assertSecurityHeaders(ok, 'success');

    const signed = new URL(ok.body.data[0].url);
    const image = await request(t.url).get(`${signed.pathname}${signed.search}`);
    assert.equal(image.status, 200);
    assertSecurityHeaders(image, 'proxied image');

    const bad = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ ...body, n: 0 });
    assert.equal(bad.status, 400);
    assertSecurityHeaders(bad, 'validation error');

    const unauth = await request(t.url).post('/v1/images/generations').send(body);
    assert.equal(unauth.status, 401);
    assertSecurityHeaders(unauth, 'auth error');

    const badJson = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).set('content-type', 'application/json').send('{');
    assert.equal(badJson.status, 400);
    assertSecurityHeaders(badJson, 'body error');

    t.emulator.armFault({ phase: 'submit', status: 401 });
    const upstream = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(upstream.status, 502);
    assertSecurityHeaders(upstream, 'upstream error');

    const missing = await request(t.url).get('/no/such/route');
    assert.equal(missing.status, 404);
    assertSecurityHeaders(missing, '404');

    assertSecurityHeaders(await request(t.url).get('/healthz'), 'healthz');
  });

  it("are on the answers Node's HTTP parser refuses before Express runs", async () => {
    const { port } = new URL(t.url);
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1', () => socket.write('GET /bad\u0001path HTTP/1.1\r\nHost: x\r\n\r\n'));
      let data = '';
      socket.on('data', (d) => (data += d.toString('latin1')));
      socket.on('end', () => resolve(data));
      socket.on('error', reject);
    });
    const [head] = raw.split('\r\n\r\n');
    const headers = Object.fromEntries(
      head!.split('\r\n').slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
    );
    assert.match(head!, /^HTTP\/1\.1 400 /);
    assertSecurityHeaders({ headers } as unknown as request.Response, 'parser refusal');
  });

  it('CORS is off by default: no allow-origin, even for a preflight', async () => {
    const res = await request(t.url).get('/healthz').set('Origin', ORIGIN);
    assert.equal(res.headers['access-control-allow-origin'], undefined);
    const pre = await request(t.url)
      .options('/v1/images/generations')
      .set('Origin', ORIGIN)
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization,content-type');
    assert.equal(pre.headers['access-control-allow-origin'], undefined);
    assert.equal(pre.headers['access-control-allow-methods'], undefined);
  });

  it('with CORS_ORIGINS: a listed origin is allowed (preflight and request), an unlisted one is not', async () => {
    const pre = await request(withCors.url)
      .options('/v1/images/generations')
      .set('Origin', ORIGIN)
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization,content-type,idempotency-key');
    assert.ok(pre.status === 204 || pre.status === 200, String(pre.status));
    assert.equal(pre.headers['access-control-allow-origin'], ORIGIN);
    assert.match(String(pre.headers['access-control-allow-methods']), /POST/);
    assert.match(String(pre.headers['access-control-allow-headers']), /authorization/);
    assert.match(String(pre.headers['access-control-allow-headers']), /idempotency-key/);

    const res = await request(withCors.url).post('/v1/images/generations').set('Origin', ORIGIN).set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(res.status, 200);
    assert.equal(res.headers['access-control-allow-origin'], ORIGIN);
    assert.match(String(res.headers['vary']), /Origin/i);
    assert.match(String(res.headers['access-control-expose-headers']), /x-request-id/);
    assert.match(String(res.headers['access-control-expose-headers']), /x-usage-cost-usd/);
    assertSecurityHeaders(res, 'CORS success');

    const err = await request(withCors.url).post('/v1/images/generations').set('Origin', ORIGIN).send(body);
    assert.equal(err.status, 401);
    assert.equal(err.headers['access-control-allow-origin'], ORIGIN, 'errors are readable by the allowed origin too');

    for (const other of ['https://evil.example.com', 'http://app.example.com', 'https://app.example.com.evil.net', 'null']) {
      const r = await request(withCors.url).get('/healthz').set('Origin', other);
      assert.equal(r.headers['access-control-allow-origin'], undefined, other);
      const p = await request(withCors.url).options('/v1/images/generations').set('Origin', other).set('Access-Control-Request-Method', 'POST');
      assert.equal(p.headers['access-control-allow-origin'], undefined, other);
    }
  });
});
