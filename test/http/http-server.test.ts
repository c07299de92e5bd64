import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingMessage, ServerResponse, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { createHttpServer } from '../../src/http/http-server.js';

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
