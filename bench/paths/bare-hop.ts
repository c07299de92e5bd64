import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent, fetch } from 'undici';
import type { FalGateway } from '../../src/fal/gateway.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';

/**
 * Path (h): the floor under (b). The same client as (b) posts the same body
 * to a bare `node:http` server in this process, which parses it and runs the
 * fal job of path (a) on the same gateway, then answers a small
 * OpenAI-shaped JSON. No routing, key, validation, ledger, logs or headers:
 * only the HTTP hop a gateway cannot avoid. So h−a is what any gateway built
 * this way pays before doing anything, and b−h is what ours does on top.
 * A measuring aid, not a design: it bills nothing and checks nothing.
 */
export async function bareHopPath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  fal: FalGateway;
  endpoint: string;
  /** The fal input path (a) sends; the bench checks (b) sends the same. */
  input: Record<string, unknown>;
  body: Record<string, unknown>;
}): Promise<BenchPath> {
  const { fal, endpoint, input } = opts;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        try {
          // Parsed like any gateway must, though the job sent is (a)'s.
          JSON.parse(Buffer.concat(chunks).toString('utf8'));
          const signal = new AbortController().signal;
          const { falRequestId } = await fal.submit(endpoint, input, { signal });
          await fal.waitForCompletion(endpoint, falRequestId, { signal });
          const r = await fal.result(endpoint, falRequestId, { signal });
          const body = JSON.stringify({ created: Math.floor(Date.now() / 1000), data: r.output.images.map((i) => ({ url: i.url })), meta: { fal_request_id: r.falRequestId } });
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        } catch (err) {
          res.writeHead(502, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { message: (err as Error).message } }));
        }
      })();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/images/generations`;
  const payload = JSON.stringify(opts.body);
  const headers = { authorization: 'Bearer sk-bench-bare', 'content-type': 'application/json' };
  // The same client, set up the same way, as (b).
  const client = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    async call(signal) {
      const res = await fetch(url, { method: 'POST', headers, body: payload, signal, dispatcher: client });
      const json = (await res.json()) as { meta?: { fal_request_id?: string }; error?: { message?: string } };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${json.error?.message ?? 'no error message'}`);
      return { upstreamId: json.meta?.fal_request_id, doneAtMs: Date.now() };
    },
    async close() {
      await client.close();
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
