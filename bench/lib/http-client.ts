import { Agent, get, request } from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * A keep-alive HTTP/1.1 client on node:http, for thousands of concurrent
 * requests from one process: one socket per request in flight (as SDK
 * clients do), no pool cap, and no dependency the service itself uses, so
 * the client cannot share a bug or a tuning with what it measures.
 */

export function keepAliveAgent(): Agent {
  return new Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 20_000, keepAliveMsecs: 30_000 });
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** performance.now() when the request was sent and when its last byte arrived. */
  startedAt: number;
  endedAt: number;
  /** Date.now() at the last byte, to join with another process's wall-clock timestamps. */
  doneAtWallMs: number;
}

export function post(url: string, payload: string | Buffer, opts: { agent: Agent; headers?: Record<string, string>; timeoutMs: number; discardBody?: boolean }): Promise<Reply> {
  const u = new URL(url);
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  return new Promise((resolve, reject) => {
    const startedAt = performance.now();
    const req = request(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        method: 'POST',
        agent: opts.agent,
        headers: { 'content-type': 'application/json', 'content-length': String(body.length), ...opts.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (!opts.discardBody) chunks.push(c);
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: opts.discardBody ? Buffer.alloc(0) : Buffer.concat(chunks, size),
            startedAt,
            endedAt: performance.now(),
            doneAtWallMs: Date.now(),
          });
        });
        res.on('error', reject);
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`no full answer within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(body);
  });
}

/**
 * A GET on a connection of its own: a pooled connection left idle while the
 * other side is blocked (a heap snapshot, a long GC) can be closed by its
 * keep-alive timer just as it is reused, and the bench would fail on that race.
 */
export function getText(url: string, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        if ((res.statusCode ?? 0) >= 400) reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
        else resolve(text);
      });
      res.on('error', reject);
    });
    const timer = setTimeout(() => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function getJson<T>(url: string, timeoutMs = 30_000): Promise<T> {
  return JSON.parse(await getText(url, timeoutMs)) as T;
}

/** One gauge or counter of a Prometheus text exposition: the sum over its label sets, or over those matching `labels`. */
export function promValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) {
      sum += Number(m[3]);
      seen = true;
    }
  }
  return seen ? sum : Number.NaN;
}
