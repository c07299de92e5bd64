import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Agent as UndiciAgent, fetch as undiciFetch } from 'undici';
import { createYoungGarbageFetch } from '../../src/fal/young-garbage-fetch.js';
import { createFalGateway } from '../../src/fal/gateway.js';
import type { FetchLike } from '../../src/fal/redirect-fetch.js';

/** The fetch the service uses for fal calls with small answers: what the fal client reads off a Response must be what fetch gave. */
describe('young-garbage fetch', () => {
  let server: Server;
  let base: string;
  const agent = new UndiciAgent({ connections: 4 });
  const f = createYoungGarbageFetch(agent);
  const received: Array<{ method?: string; url?: string; headers: Record<string, unknown>; body: string }> = [];

  before(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
        if (req.url === '/empty') {
          res.writeHead(204).end();
          return;
        }
        if (req.url === '/hang') return;
        res.setHeader('set-cookie', ['a=1', 'b=2']);
        res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-type': 'application/json', 'x-fal-request-id': 'job-1' });
        res.end(JSON.stringify({ status: 'IN_QUEUE', queue_position: 3 }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await agent.close();
  });

  it('sends method, path with query, headers and body; answers status, headers and JSON', async () => {
    const res = await f(`${base}/queue/status?logs=0`, { method: 'post', headers: { authorization: 'Key k', 'content-type': 'application/json' }, body: '{"x":1}' });
    const sent = received.at(-1)!;
    assert.equal(sent.method, 'POST');
    assert.equal(sent.url, '/queue/status?logs=0');
    assert.equal(sent.headers.authorization, 'Key k');
    assert.equal(sent.body, '{"x":1}');
    assert.equal(res.status, 200);
    assert.equal(res.ok, true);
    assert.equal(res.headers.get('x-fal-request-id'), 'job-1');
    assert.equal(res.headers.get('set-cookie'), 'a=1, b=2');
    assert.deepEqual(await res.json(), { status: 'IN_QUEUE', queue_position: 3 });
  });

  it('an error status is an answer, not a rejection; a 204 has no body', async () => {
    const missing = await f(`${base}/missing`);
    assert.equal(missing.status, 404);
    assert.equal(missing.ok, false);
    const empty = await f(`${base}/empty`);
    assert.equal(empty.status, 204);
    assert.equal(empty.body, null);
  });

  it('rejects when its signal aborts, with the signal aborted', async () => {
    const ac = new AbortController();
    const pending = f(`${base}/hang`, { signal: ac.signal });
    while (!received.some((r) => r.url === '/hang')) await new Promise((r) => setTimeout(r, 5));
    ac.abort();
    await assert.rejects(pending);
    assert.equal(ac.signal.aborted, true);
  });

  it('a refused connection rejects with ECONNREFUSED where retry.ts looks for it (never sent, safe to resend)', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const err = await f(`http://127.0.0.1:${port}/`).then(
      () => undefined,
      (e: unknown) => e as { code?: string; cause?: { code?: string } },
    );
    assert.ok(err);
    assert.equal(err.code ?? err.cause?.code, 'ECONNREFUSED');
  });

  it('headers given as Headers, pairs or a plain object reach the server alike, names case-folded', async () => {
    for (const headers of [new Headers({ 'X-Probe': 'a' }), [['X-Probe', 'a']] as [string, string][], { 'X-Probe': 'a' }]) {
      await f(`${base}/queue/status`, { headers });
      assert.equal(received.at(-1)!.headers['x-probe'], 'a');
    }
  });

  it('the answer reads like a fetch Response: the body once, as JSON, text, bytes or a stream; its headers iterate', async () => {
    const a = await f(`${base}/queue/status`);
    assert.equal(await a.text(), '{"status":"IN_QUEUE","queue_position":3}');
    assert.equal(a.bodyUsed, true);
    await assert.rejects(a.json(), TypeError, 'a second read is refused, as fetch does');

    const b = await f(`${base}/queue/status`);
    assert.deepEqual(JSON.parse(Buffer.from(await b.arrayBuffer()).toString()), { status: 'IN_QUEUE', queue_position: 3 });

    // Its body as a stream and its headers copy into a standard Response (as fal-call.ts copies a result's headers).
    const c = await f(`${base}/missing`);
    const rewrapped = new Response(c.body, { status: c.status, headers: new Headers(c.headers as unknown as Headers) });
    assert.equal(rewrapped.headers.get('x-fal-request-id'), 'job-1');
    assert.equal(rewrapped.headers.get('content-type'), 'application/json');
    assert.deepEqual(await rewrapped.json(), { status: 'IN_QUEUE', queue_position: 3 });
    assert.ok([...c.headers].some(([k]) => k === 'set-cookie'));
  });
});

/**
 * The saving this fetch exists for (its header has the figure): per status
 * poll through the gateway, the bytes that outlive young collections, through
 * it and through undici's fetch on the same pool. Bytes, not time: the
 * heap is read after the same number of polls and minor collections.
 */
describe('young-garbage fetch: the saving', () => {
  it('a status poll leaves less than half the old-generation garbage undici\'s fetch leaves', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as (opts?: { type: 'minor' | 'major' }) => void;
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-fal-request-id': 'job-1' });
      res.end('{"status":"IN_PROGRESS","queue_position":0}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const pool = new UndiciAgent({ connections: 4 });
    const viaFetch: FetchLike = (input, init) => undiciFetch(input as string, { ...(init as object), dispatcher: pool }) as unknown as Promise<Response>;
    const oldSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')!.space_used_size;
    const POLLS = 300;
    /** Bytes per poll left in the old generation after minor collections only. */
    async function promotedPerPoll(fetchImpl: FetchLike): Promise<number> {
      const fal = createFalGateway({ credentials: 'k', baseUrl: base, fetchFor: () => fetchImpl });
      const job = new AbortController();
      for (let i = 0; i < 100; i++) await fal.status('fal-ai/z-image/turbo', 'job-1', { signal: job.signal });
      gc();
      gc();
      const before = oldSpace();
      for (let i = 0; i < POLLS; i++) await fal.status('fal-ai/z-image/turbo', 'job-1', { signal: job.signal });
      for (let i = 0; i < 3; i++) gc({ type: 'minor' });
      return (oldSpace() - before) / POLLS;
    }
    try {
      const young: number[] = [];
      const viaUndici: number[] = [];
      for (let round = 0; round < 3; round++) {
        young.push(await promotedPerPoll(createYoungGarbageFetch(pool)));
        viaUndici.push(await promotedPerPoll(viaFetch));
      }
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1]!;
      const ratio = median(viaUndici) / Math.max(1, median(young));
      assert.ok(ratio >= 2, `old-generation bytes per poll: undici fetch ${viaUndici.map(Math.round).join('/')}, young-garbage fetch ${young.map(Math.round).join('/')} (ratio ${ratio.toFixed(2)})`);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await pool.close();
    }
  });
});
