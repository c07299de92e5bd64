import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { BenchUpstream } from '../lib/paths.js';

/**
 * Path (d)'s upstream: the least an OpenAI-images server can be, so that
 * (c)−(d) is the peer gateway's cost and nothing of ours. It waits the same
 * job time as the fal emulator in (a)/(b), then answers a small fixed body.
 * Each answer carries a unique id in its image URL, because OpenAI's response
 * has no id field and the peer passes the body through: that id is how a
 * client's response is joined back to when the upstream finished it.
 */
export interface OpenAiImagesUpstream extends BenchUpstream {
  readonly url: string;
  /** The request body the upstream received for a job (for the same-work check). */
  bodyOf(id: string): unknown;
  close(): Promise<void>;
}

export const IMAGE_URL_PREFIX = 'http://127.0.0.1/bench-image/';

export function idFromImageUrl(url: unknown): string | undefined {
  return typeof url === 'string' && url.startsWith(IMAGE_URL_PREFIX) ? url.slice(IMAGE_URL_PREFIX.length) : undefined;
}

export async function startOpenAiImagesUpstream(opts: { latencyMs: number; label: string }): Promise<OpenAiImagesUpstream> {
  let seq = 0;
  let calls = 0;
  let jobs = 0;
  // Bodies are kept only for the one-off start-up check; per-job memory in
  // the rounds is a timestamp, like the emulator's job table.
  let keepBodies = true;
  const completed = new Map<string, number>();
  const bodies = new Map<string, unknown>();

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    calls++;
    if (req.method !== 'POST' || req.url !== '/v1/images/generations') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const id = String(++seq);
      jobs++;
      if (keepBodies) {
        try {
          bodies.set(id, JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          bodies.set(id, undefined);
        }
      }
      setTimeout(() => {
        const body = JSON.stringify({ created: Math.floor(Date.now() / 1000), data: [{ url: `${IMAGE_URL_PREFIX}${id}` }] });
        completed.set(id, Date.now());
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
      }, opts.latencyMs);
    });
  });
  // Keep-alive longer than any other path's round, so a round never starts by reconnecting.
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    label: opts.label,
    url: `http://127.0.0.1:${port}`,
    reset() {
      completed.clear();
      bodies.clear();
      keepBodies = false;
      calls = 0;
      jobs = 0;
    },
    completedAtMs: (id) => completed.get(id),
    counters: () => ({ jobs, calls: { generate: calls } }),
    bodyOf: (id) => bodies.get(id),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
