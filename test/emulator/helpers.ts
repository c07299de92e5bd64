/** Shared setup for the emulator tests: a real @fal-ai/client pointed at an emulator. */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createFalClient } from '@fal-ai/client';
import { createRedirectFetch } from '../../src/fal/redirect-fetch.js';
import { startEmulator, type Emulator, type EmulatorOptions } from '../../src/emulator/index.js';

export const TURBO = 'fal-ai/z-image/turbo';
export const LORA = 'fal-ai/z-image/turbo/lora';

/** `credentials: null` sends no Authorization header at all. */
export function falClient(emu: Emulator, credentials: string | null = 'test-key') {
  return createFalClient({
    ...(credentials === null ? { credentials: () => undefined } : { credentials }),
    fetch: createRedirectFetch({ baseUrl: emu.url }),
  });
}

/** Starts an emulator that the test's own `t.after` closes. */
export async function emulator(t: { after(fn: () => Promise<void>): void }, opts: EmulatorOptions = {}): Promise<Emulator> {
  const emu = await startEmulator({ port: 0, latencyMs: 30, ...opts });
  t.after(() => emu.close());
  return emu;
}

export interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

/** A raw HTTP call to `https://<host>/<path>` as the redirect fetch would send it. */
export async function raw(
  emu: Emulator,
  method: string,
  target: string,
  opts: { body?: unknown; key?: string | null; headers?: Record<string, string> } = {},
): Promise<RawResponse> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.key !== null) headers.authorization = `Key ${opts.key ?? 'test-key'}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['content-type'] = 'application/json';
  }
  const url = target.startsWith('http') ? target : `${emu.url}/${target.replace(/^\//, '')}`;
  const res = await fetch(url, { method, headers, ...(body === undefined ? {} : { body }) });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** Submits through the queue with raw HTTP; returns the request id. */
export async function rawSubmit(emu: Emulator, endpoint: string, input: unknown, query = ''): Promise<string> {
  const r = await raw(emu, 'POST', `queue.fal.run/${endpoint}${query}`, { body: input });
  if (r.status !== 200) throw new Error(`submit failed: ${r.status} ${r.text}`);
  return r.json.request_id as string;
}

export async function waitFor<T>(fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 5000, stepMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error('waitFor: timed out');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

export function appOf(endpoint: string): string {
  return endpoint.split('/').slice(0, 2).join('/');
}

export interface Delivery {
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A webhook receiver that fails its first `failFirst` deliveries with 500. */
export async function receiver(t: { after(fn: () => Promise<void>): void }, failFirst = 0) {
  const deliveries: Delivery[] = [];
  let seen = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen += 1;
      if (seen <= failFirst) {
        res.writeHead(500).end('nope');
        return;
      }
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, deliveries, attempts: () => seen };
}

