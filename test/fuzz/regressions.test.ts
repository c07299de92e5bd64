import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { gzipSync } from 'node:zlib';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { createAgent, judge, send, targetOf, type Outcome } from './harness.js';
import { IMAGES_PATH, type FuzzCase } from './generator.js';
import { requestRow } from '../helpers/requests.js';

/**
 * One fixed case for each bug the fuzzer found, so each stays fixed whatever
 * seed the fuzz test draws. Every answer must also pass the fuzzer's whole
 * invariant (judge), not just the assertion about the bug.
 */
const JSON_HEADERS = { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' };
const TURBO = 'alibaba/z-image-turbo';

function errorOf(o: Outcome): { code: string; param: string | null } {
  return (JSON.parse(o.body.toString('utf8')) as { error: { code: string; param: string | null } }).error;
}

describe('fuzz regressions', () => {
  let t: TestService;
  let agent: ReturnType<typeof createAgent>;
  const run = async (c: Omit<FuzzCase, 'index' | 'label'>): Promise<Outcome> => {
    const full: FuzzCase = { index: 0, label: 'regression', ...c };
    const o = await send(targetOf(t.url), agent, full, 10_000);
    assert.deepEqual(judge(full, o), [], `${o.status} ${o.body.toString('utf8').slice(0, 300)}`);
    return o;
  };
  const raw = (bytes: string | Buffer) => run({ method: 'POST', path: IMAGES_PATH, headers: {}, body: undefined, raw: Buffer.from(bytes) });

  before(async () => {
    t = await startTestService({ LOG_LEVEL: 'warn', DEFAULT_RPM_LIMIT: '0' }, { imageMode: 'cheap', latencyMs: 5 });
    agent = createAgent(2);
  });
  after(async () => {
    agent.destroy();
    await t.close();
  });

  it('a value nested deeper than the stack is a 400 naming its field, not a 500', async () => {
    const deep = '['.repeat(50_000) + ']'.repeat(50_000);
    const o = await run({ method: 'POST', path: IMAGES_PATH, headers: JSON_HEADERS, body: `{"model":"${TURBO}","prompt":"x","image_size":${deep}}` });
    assert.equal(o.status, 400);
    assert.equal(errorOf(o).param, 'image_size');
  });

  for (const encoding of ['gzip', 'deflate', 'br']) {
    it(`a body that does not inflate as ${encoding} is a 400, not a 500`, async () => {
      const o = await run({ method: 'POST', path: IMAGES_PATH, headers: { ...JSON_HEADERS, 'content-encoding': encoding }, body: `{"model":"${TURBO}","prompt":"x"}` });
      assert.equal(o.status, 400);
      assert.equal(errorOf(o).code, 'invalid_body_encoding');
    });
  }

  it('a gzip stream cut short is a 400', async () => {
    const body = gzipSync(`{"model":"${TURBO}","prompt":"a lighthouse at dawn"}`).subarray(0, 20);
    const o = await run({ method: 'POST', path: IMAGES_PATH, headers: { ...JSON_HEADERS, 'content-encoding': 'gzip' }, body });
    assert.equal(o.status, 400);
  });

  for (const path of ['/v1/files/%ZZ', '/v1/files/v3.fal.media/%ZZ', '/v1/admin/keys/%ZZ']) {
    it(`GET ${path} (bad percent-encoding in a path parameter) is a 4xx, not a 500`, async () => {
      const o = await run({ method: 'GET', path, headers: { authorization: JSON_HEADERS.authorization }, body: undefined });
      assert.ok(o.status! >= 400 && o.status! < 500, String(o.status));
    });
  }

  it('an unknown field too long to echo is named by a shorter one sent with it, or not at all', async () => {
    const long = 'k'.repeat(150);
    const alone = await run({ method: 'POST', path: IMAGES_PATH, headers: JSON_HEADERS, body: `{"model":"${TURBO}","prompt":"x","${long}":1}` });
    assert.equal(errorOf(alone).param, null);
    const both = await run({ method: 'POST', path: IMAGES_PATH, headers: JSON_HEADERS, body: `{"model":"${TURBO}","prompt":"x","${long}":1,"bogus":2}` });
    assert.equal(errorOf(both).param, 'bogus');
  });

  it('a request the HTTP parser refuses gets the error JSON and an x-request-id', async () => {
    for (const bytes of [
      `BREW ${IMAGES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}`,
      `POST ${IMAGES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}`,
      `POST ${IMAGES_PATH} HTTP/1.1\r\nHost: x\r\nX-A: a\u0001b\r\nContent-Length: 2\r\n\r\n{}`,
      Buffer.concat([Buffer.from('GET /'), Buffer.from([0xe9]), Buffer.from(' HTTP/1.1\r\nHost: x\r\n\r\n')]),
    ]) {
      const o = await raw(bytes);
      assert.equal(o.status, 400);
      assert.equal(errorOf(o).code, 'invalid_http');
      // Written before Express, yet with the same security headers as every other answer.
      assert.equal(o.headers['x-frame-options'], 'SAMEORIGIN');
      assert.match(String(o.headers['content-security-policy']), /default-src 'self'/);
    }
    const big = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(big.status, 431);
  });

  it('a HEAD request the parser refuses is answered without a body', async () => {
    // node:http's client reads any body after a HEAD answer as a broken response.
    const o = await run({ method: 'HEAD', path: '/\u00e9', headers: { authorization: JSON_HEADERS.authorization }, body: undefined });
    assert.equal(o.status, 400);
    assert.equal(o.body.length, 0);
  });

  it('a body whose chunked framing breaks after the headers were read is still answered', async () => {
    const o = await raw(`POST ${IMAGES_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TEST_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`);
    assert.equal(o.status, 400);
  });

  it('an HTTP/1.1 request without Host gets the error JSON', async () => {
    const o = await raw(`GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n`);
    assert.equal(o.status, 400);
    assert.equal(errorOf(o).code, 'missing_host');
    assert.equal(o.headers['x-content-type-options'], 'nosniff');
  });

  it('an unknown Expect does not leave its body on the connection for the next request', async () => {
    const body = `{"model":"${TURBO}","prompt":"x","n":"two"}`;
    const answers = await new Promise<string>((resolve, reject) => {
      const { host, port } = targetOf(t.url);
      const sock = net.connect(port, host, () => {
        const head = (extra: string) =>
          `POST ${IMAGES_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TEST_KEY}\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
        sock.write(head('Expect: the-unexpected\r\n'));
        setTimeout(() => sock.end(head('Connection: close\r\n')), 300);
      });
      let data = '';
      sock.on('data', (b: Buffer) => (data += b.toString('latin1')));
      sock.on('close', () => resolve(data));
      sock.on('error', reject);
    });
    const statuses = [...answers.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
    assert.deepEqual(statuses, ['400', '400'], answers.slice(0, 600));
    assert.equal([...answers.matchAll(/x-request-id: /gi)].length, 2);
  });

  it('a reused x-request-id is a 409 naming the header, not a 503 from the ledger', async () => {
    const headers = { ...JSON_HEADERS, 'x-request-id': `trace-${Date.now()}-reused` };
    const body = `{"model":"${TURBO}","prompt":"a lighthouse at dawn","image_size":"square"}`;
    const first = await run({ method: 'POST', path: IMAGES_PATH, headers, body, expect: 'valid', images: 1 });
    assert.equal(first.status, 200);
    const again = await run({ method: 'POST', path: IMAGES_PATH, headers, body });
    assert.equal(again.status, 409);
    assert.deepEqual(errorOf(again), { ...errorOf(again), code: 'request_id_reused', param: 'x-request-id' });
    const rows = await requestRow(t.service, headers['x-request-id']);
    assert.equal(rows?.status, 'settled', 'the first request keeps its row');
  });
});
