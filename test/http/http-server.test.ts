import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingMessage, ServerResponse, request as httpRequest, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import express from 'express';
import { createHttpServer } from '../../src/http/http-server.js';
import { loadConfig } from '../../src/config.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * The server builds Express's request and response objects from classes
 * whose prototypes are the app's own, so Express's per-request prototype swap
 * changes nothing (and V8 keeps one hidden class for all of them). Whatever
 * Express and Node offer on them must still be there.
 */
describe('http server: requests and responses are born with the app’s prototypes', () => {
  const app = express();
  let server: Server;
  let url: string;
  const seen: Array<Record<string, unknown>> = [];
  app.use(express.json());
  app.post('/echo/:id', (req, res) => {
    seen.push({
      reqProtoIsApps: Object.getPrototypeOf(req) === app.request,
      resProtoIsApps: Object.getPrototypeOf(res) === app.response,
      reqIsIncoming: req instanceof IncomingMessage,
      resIsServerResponse: res instanceof ServerResponse,
      appOnReq: req.app === app,
    });
    res.status(201).set('x-id', req.params.id!).json({ got: req.body, host: req.get('host') !== undefined, protocol: req.protocol, path: req.path });
  });

  before(async () => {
    server = createHttpServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('Express’s own request and response API works as before', async () => {
    const res = await fetch(`${url}/echo/abc?x=1`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":1}' });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get('x-id'), 'abc');
    assert.deepEqual(await res.json(), { got: { a: 1 }, host: true, protocol: 'http', path: '/echo/abc' });
    assert.deepEqual(seen.at(-1), { reqProtoIsApps: true, resProtoIsApps: true, reqIsIncoming: true, resIsServerResponse: true, appOnReq: true });
  });

  it('a second server for the same app reuses the classes', async () => {
    const again = createHttpServer(app);
    await new Promise<void>((r) => again.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (again.address() as AddressInfo).port;
      const res = await fetch(`http://127.0.0.1:${port}/echo/def`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      assert.equal(res.status, 201);
      assert.equal(seen.at(-1)?.reqProtoIsApps, true);
    } finally {
      await new Promise<void>((r) => again.close(() => r()));
    }
  });
});

/** Writes `chunks` on a fresh connection and collects what comes back until the server closes it or `deadlineMs` passes. */
function rawExchange(url: string, chunks: string[], deadlineMs: number): Promise<{ data: string; closedAfterMs: number | undefined }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const started = Date.now();
    let data = '';
    const socket = connect(Number(port), hostname, () => {
      for (const c of chunks) socket.write(c);
    });
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (data += d));
    socket.on('error', () => {});
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ data, closedAfterMs: undefined });
    }, deadlineMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ data, closedAfterMs: Date.now() - started });
    });
  });
}

function refusals(metrics: string, reason: string): number {
  return Number(new RegExp(`^gateway_refusals_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
}

const IMAGE_BODY = JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'slow client', image_size: 'square' });

describe('connection limits: a slow client holds a socket for the configured seconds (HEADERS_TIMEOUT_MS=1000, BODY_TIMEOUT_MS=2000)', () => {
  let t: TestService;
  before(async () => {
    // Jobs take longer than the body timeout: answers are not what it limits.
    t = await startTestService({ HEADERS_TIMEOUT_MS: '1000', BODY_TIMEOUT_MS: '2000', MAX_IN_FLIGHT: '1', DEFAULT_RPM_LIMIT: '0' }, { latencyMs: 2_500, imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });
  const metrics = async () => t.service.metrics.registry.metrics();

  it('headers sent too slowly, or none at all: 408 request_timeout and the connection closed within seconds', async () => {
    const before = refusals(await metrics(), 'request_timeout');
    const [partial, silent] = await Promise.all([
      rawExchange(t.url, ['POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '], 15_000),
      rawExchange(t.url, [], 15_000),
    ]);
    for (const r of [partial, silent]) {
      assert.ok(r.closedAfterMs !== undefined, `still open after 15 s: ${JSON.stringify(r.data)}`);
      assert.ok(r.closedAfterMs >= 900, `closed after ${r.closedAfterMs} ms, before the timeout`);
      assert.match(r.data, /^HTTP\/1\.1 408 /);
      assert.match(r.data, /"code":"request_timeout"/);
    }
    assert.equal(refusals(await metrics(), 'request_timeout'), before + 2);
  });

  it('an idle kept-alive connection outlives the headers timeout and announces KEEP_ALIVE_TIMEOUT_MS (65 s): a request on it 2.5 s later is answered', async () => {
    const socket = connect(Number(new URL(t.url).port), '127.0.0.1');
    let data = '';
    let closed = false;
    socket.setEncoding('latin1');
    socket.on('data', (c: string) => (data += c));
    socket.on('close', () => (closed = true));
    const answers = async (n: number) => {
      const deadline = Date.now() + 15_000;
      while ((data.match(/HTTP\/1\.1 200 /g) ?? []).length < n && !closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    };
    try {
      socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await answers(1);
      assert.match(data, /^HTTP\/1\.1 200 /);
      assert.match(data, /\r\nKeep-Alive: timeout=65\r\n/i);
      await new Promise((r) => setTimeout(r, 2_500));
      assert.equal(closed, false, 'the server closed an idle kept-alive connection at the headers timeout');
      socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await answers(2);
      assert.equal((data.match(/HTTP\/1\.1 200 /g) ?? []).length, 2, data);
    } finally {
      socket.destroy();
    }
  });

  it('a body sent too slowly: 408 and closed, and its in-flight place is given back', async () => {
    const head = [
      'POST /v1/images/generations HTTP/1.1',
      'Host: x',
      `Authorization: Bearer ${TEST_KEY}`,
      'Content-Type: application/json',
      `Content-Length: ${IMAGE_BODY.length}`,
      '',
      '',
    ].join('\r\n');
    const slow = await rawExchange(t.url, [head, IMAGE_BODY.slice(0, 10)], 20_000);
    assert.ok(slow.closedAfterMs !== undefined, `still open after 20 s: ${JSON.stringify(slow.data)}`);
    assert.ok(slow.closedAfterMs >= 1_900, `closed after ${slow.closedAfterMs} ms, before the timeout`);
    assert.match(slow.data, /^HTTP\/1\.1 408 /);
    // MAX_IN_FLIGHT is 1: this is served only if the cut request released its place.
    const res = await fetch(`${t.url}/v1/images/generations`, { method: 'POST', headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' }, body: IMAGE_BODY });
    assert.equal(res.status, 200, await res.text());
  });

  it('an answer that takes longer than BODY_TIMEOUT_MS is not cut: the timeout covers receiving the request only', async () => {
    const started = Date.now();
    const res = await fetch(`${t.url}/v1/images/generations`, { method: 'POST', headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' }, body: IMAGE_BODY });
    assert.equal(res.status, 200, await res.text());
    assert.ok(Date.now() - started >= 2_000, 'the job outlasted the body timeout');
  });
});

describe('connection limits: the cap on connections sits above MAX_IN_FLIGHT', () => {
  it('MAX_CONNECTIONS defaults to twice MAX_IN_FLIGHT, and at least MAX_IN_FLIGHT + 100', () => {
    const base = { FAL_BASE_URL: 'http://127.0.0.1:1', FAL_KEY: 'k' };
    assert.equal(loadConfig({ ...base, MAX_IN_FLIGHT: '2000' }).maxConnections, 4_000);
    assert.equal(loadConfig({ ...base, MAX_IN_FLIGHT: '10' }).maxConnections, 110);
    assert.equal(loadConfig({ ...base }).maxConnections, 4_000);
    assert.equal(loadConfig({ ...base, MAX_IN_FLIGHT: '10', MAX_CONNECTIONS: '11' }).maxConnections, 11);
    assert.throws(() => loadConfig({ ...base, MAX_IN_FLIGHT: '10', MAX_CONNECTIONS: '10' }), /MAX_CONNECTIONS \(10\) must be greater than MAX_IN_FLIGHT \(10\)/);
    const d = loadConfig(base);
    assert.deepEqual([d.headersTimeoutMs, d.bodyTimeoutMs, d.keepAliveTimeoutMs], [10_000, 30_000, 65_000]);
  });

  describe('MAX_IN_FLIGHT=2, MAX_CONNECTIONS=5', () => {
    let t: TestService;
    const idle: Socket[] = [];
    before(async () => {
      t = await startTestService(
        { MAX_IN_FLIGHT: '2', MAX_CONNECTIONS: '5', DEFAULT_RPM_LIMIT: '0', HEADERS_TIMEOUT_MS: '60000', BODY_TIMEOUT_MS: '60000', SHUTDOWN_GRACE_MS: '0' },
        { latencyMs: 60_000, imageMode: 'cheap' },
      );
    });
    after(async () => {
      for (const s of idle) s.destroy();
      await t.close();
    });
    const connections = () => new Promise<number>((resolve, reject) => t.service.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
    const until = async (what: string, ok: () => Promise<boolean> | boolean) => {
      const deadline = Date.now() + 15_000;
      while (!(await ok())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    /** One request on its own connection, closed after the answer. */
    const post = () =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest(`${t.url}/v1/images/generations`, { method: 'POST', agent: false, headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' } }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end(IMAGE_BODY);
      });

    it('a request past MAX_IN_FLIGHT gets its 429; a connection past MAX_CONNECTIONS is closed unanswered and counted', async () => {
      // Two requests wait on fal for a minute (their connections end with the service).
      const waiting = [post(), post()];
      for (const w of waiting) w.catch(() => {});
      await until('two jobs at fal', () => t.emulator.jobs().length === 2);
      const over = await post();
      assert.equal(over.status, 429, over.body);
      assert.match(over.body, /"code":"rate_limit_exceeded"/);
      await until('the refused connection to close', async () => (await connections()) === 2);

      for (let i = 0; i < 3; i++) {
        const s = connect(Number(new URL(t.url).port), '127.0.0.1');
        s.on('error', () => {});
        idle.push(s);
      }
      await until('five connections', async () => (await connections()) === 5);
      const dropped = await rawExchange(t.url, ['GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'], 15_000);
      assert.ok(dropped.closedAfterMs !== undefined, 'the sixth connection was closed');
      assert.equal(dropped.data, '', 'unanswered');
      assert.equal(refusals(await t.service.metrics.registry.metrics(), 'max_connections'), 1);

      for (const s of idle.splice(0)) s.destroy();
      await until('room again', async () => (await connections()) === 2);
      const health = await rawExchange(t.url, ['GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'], 15_000);
      assert.match(health.data, /^HTTP\/1\.1 200 /);
    });
  });
});
