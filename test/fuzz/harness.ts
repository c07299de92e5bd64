/**
 * Sends fuzz cases over real sockets and judges every answer against the
 * hostile-input invariant. Shared by the fuzz test and bench/fuzz.ts.
 *
 * The invariant: never a 5xx, never a hang, every response carries
 * `x-request-id`, every error is exactly `{"error":{"message","type","param","code"}}`,
 * valid requests get 200 with the images they asked for, requests carrying
 * text no database can store get a 4xx, and a 400's `param` names something
 * the caller actually sent (a top-level body field, a query or path
 * parameter or a header), or is null, or is `model`/`prompt` when missing.
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import { generateCase, shrinkCandidates, POLLUTION_MARK, type FuzzCase, type GeneratorOptions } from './generator.js';

export interface Outcome {
  status: number | null;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** Transport failure: no complete answer arrived. */
  error?: string;
  ms: number;
}

export interface Failure {
  fuzzCase: FuzzCase;
  outcome: Outcome;
  violations: string[];
}

// ---------------------------------------------------------------- transport

export interface Target {
  host: string;
  port: number;
}

export function targetOf(url: string): Target {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port) };
}

export function createAgent(concurrency: number): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: concurrency, maxFreeSockets: concurrency });
}

function sendHttp(t: Target, agent: http.Agent, c: FuzzCase, timeoutMs: number): Promise<Outcome> {
  const started = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const done = (o: Omit<Outcome, 'ms'>) => {
      if (settled) return;
      settled = true;
      resolve({ ...o, ms: performance.now() - started });
    };
    const headers = { ...c.headers };
    // node:http frames a GET/HEAD/DELETE body with nothing at all; the server would read it as the next request.
    const framed = Object.keys(headers).some((k) => /^(?:content-length|transfer-encoding)$/i.test(k));
    if (c.body !== undefined && !framed) headers['content-length'] = String(Buffer.byteLength(c.body));
    let req: http.ClientRequest;
    try {
      req = http.request({ host: t.host, port: t.port, method: c.method, path: c.path, headers, agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (b: Buffer) => chunks.push(b));
        res.on('end', () => done({ status: res.statusCode ?? null, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', (e) => done({ status: res.statusCode ?? null, headers: res.headers, body: Buffer.concat(chunks), error: `response: ${e.message}` }));
      });
    } catch (e) {
      // node:http refused to send it: a generator bug, reported as such rather than blamed on the service.
      done({ status: null, headers: {}, body: Buffer.alloc(0), error: `unsendable: ${(e as Error).message}` });
      return;
    }
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (e) => done({ status: null, headers: {}, body: Buffer.alloc(0), error: e.message }));
    req.end(c.body);
  });
}

/** The first response on a bare socket; enough of HTTP/1.1 to read our own answers. */
function parseRaw(data: Buffer): { status: number; headers: Record<string, string | string[]>; body: Buffer } | null {
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = data.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (!m) return null;
  const headers: Record<string, string | string[]> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prev = headers[name];
    headers[name] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
  let body = data.subarray(end + 4);
  const len = Number(headers['content-length']);
  if (Number.isInteger(len) && len >= 0) body = body.subarray(0, len);
  else if (String(headers['transfer-encoding']).toLowerCase() === 'chunked') body = dechunk(body);
  return { status: Number(m[1]), headers, body };
}

function dechunk(b: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = b.indexOf('\r\n', at);
    if (eol < 0) break;
    const size = parseInt(b.subarray(at, eol).toString('latin1'), 16);
    if (!Number.isFinite(size) || size <= 0) break;
    out.push(b.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(out);
}

function sendRaw(t: Target, c: FuzzCase, timeoutMs: number): Promise<Outcome> {
  const started = performance.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      const data = Buffer.concat(chunks);
      const parsed = parseRaw(data);
      const ms = performance.now() - started;
      if (parsed) resolve({ ...parsed, ms });
      else resolve({ status: null, headers: {}, body: data, error: error ?? `no HTTP response (${data.length} bytes: ${JSON.stringify(data.subarray(0, 80).toString('latin1'))})`, ms });
    };
    const sock = net.connect(t.port, t.host, () => {
      sock.write(c.raw!);
      if (c.mayHangUp) sock.end();
    });
    sock.on('data', (b: Buffer) => {
      chunks.push(b);
      // Our raw requests ask for Connection: close, but a parser error may leave the socket open: stop once one answer is whole.
      const parsed = parseRaw(Buffer.concat(chunks));
      const len = parsed ? Number(parsed.headers['content-length']) : NaN;
      if (parsed && Number.isInteger(len) && parsed.body.length >= len) finish();
    });
    sock.on('end', () => finish());
    sock.on('close', () => finish());
    sock.on('error', (e) => finish(e.message));
    const timer = setTimeout(() => finish(`no answer within ${timeoutMs} ms`), timeoutMs);
  });
}

export function send(t: Target, agent: http.Agent, c: FuzzCase, timeoutMs = 30_000): Promise<Outcome> {
  return c.raw ? sendRaw(t, c, Math.min(timeoutMs, 10_000)) : sendHttp(t, agent, c, timeoutMs);
}

// ---------------------------------------------------------------- the oracle

function header(h: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The body as the service reads it: inflated per Content-Encoding, decoded per charset. */
function sentBodyText(c: FuzzCase): string | undefined {
  if (c.body === undefined) return undefined;
  let b = Buffer.from(c.body);
  const enc = (header(c.headers, 'content-encoding') ?? 'identity').toLowerCase();
  try {
    // The bomb inflates to 20 MiB; the service stops at its limit, and so do we.
    const limit = { maxOutputLength: 4 * 1024 * 1024 };
    if (enc === 'gzip') b = gunzipSync(b, limit);
    else if (enc === 'deflate') b = inflateSync(b, limit);
    else if (enc === 'br') b = brotliDecompressSync(b, limit);
  } catch {
    return undefined;
  }
  const charset = /charset\s*=\s*"?([^";\s]+)/i.exec(header(c.headers, 'content-type') ?? '')?.[1]?.toLowerCase();
  const text = charset === 'latin1' || charset === 'iso-8859-1' ? b.toString('latin1') : charset?.startsWith('utf-16') ? b.toString('utf16le') : b.toString('utf8');
  return text.replace(/^\ufeff/, '');
}

/** Routes with a named parameter in their path, which a 400 may name. */
const PATH_PARAMS: ReadonlyArray<readonly [RegExp, string]> = [[/^\/v1\/admin\/keys\/[^/?#]+/, 'id']];

/** Every name the caller sent: top-level body fields, query parameters, path parameters, headers. */
export function sentNames(c: FuzzCase): { body: Set<string>; other: Set<string> } {
  const body = new Set<string>();
  const text = sentBodyText(c);
  if (text !== undefined) {
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) for (const k of Object.keys(parsed)) body.add(k);
    } catch {
      // not JSON: no field names
    }
  }
  const other = new Set<string>();
  const q = c.path.indexOf('?');
  if (q >= 0) {
    for (const part of c.path.slice(q + 1).split('#', 1)[0]!.split('&')) {
      const name = part.split('=', 1)[0]!;
      other.add(name);
      try {
        other.add(decodeURIComponent(name.replace(/\+/g, ' ')));
      } catch {
        // undecodable: the raw name stands
      }
    }
  }
  for (const name of Object.keys(c.headers)) other.add(name.toLowerCase());
  for (const [pattern, name] of PATH_PARAMS) if (pattern.test(c.path)) other.add(name);
  return { body, other };
}

const ERROR_KEYS = ['code', 'message', 'param', 'type'];

/** Every way `o` breaks the invariant for `c`; empty when it holds. */
export function judge(c: FuzzCase, o: Outcome): string[] {
  const v: string[] = [];
  if (o.error !== undefined || o.status === null) {
    if (!c.mayHangUp) v.push(`no response: ${o.error ?? 'unknown'}`);
    return v;
  }
  if (o.status >= 500) v.push(`status ${o.status}`);
  const rid = header(o.headers, 'x-request-id');
  if (!rid) v.push('no x-request-id header');

  const isHead = c.method === 'HEAD';
  if (o.status >= 400 && !isHead) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(o.body.toString('utf8'));
    } catch {
      v.push(`error body is not JSON: ${JSON.stringify(o.body.subarray(0, 120).toString('utf8'))}`);
      return v;
    }
    const ctype = header(o.headers, 'content-type') ?? '';
    if (!/^application\/json\b/.test(ctype)) v.push(`error content-type ${JSON.stringify(ctype)}`);
    const top = parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? Object.keys(parsed) : null;
    const e = top?.length === 1 && top[0] === 'error' ? (parsed as { error: unknown }).error : undefined;
    if (!e || typeof e !== 'object' || Array.isArray(e)) {
      v.push(`error body is not {"error":{...}}: ${JSON.stringify(parsed).slice(0, 160)}`);
      return v;
    }
    const err = e as Record<string, unknown>;
    const keys = Object.keys(err).sort();
    if (keys.join() !== ERROR_KEYS.join()) v.push(`error keys ${JSON.stringify(keys)}`);
    for (const k of ['message', 'type', 'code']) if (typeof err[k] !== 'string') v.push(`error.${k} is ${JSON.stringify(err[k])}`);
    if (err['param'] !== null && typeof err['param'] !== 'string') v.push(`error.param is ${JSON.stringify(err['param'])}`);
    if (o.status === 400 && typeof err['param'] === 'string') {
      const param = err['param'];
      const names = sentNames(c);
      const sent = names.body.has(param) || names.other.has(param) || names.other.has(param.toLowerCase());
      if (!sent && param !== 'model' && param !== 'prompt') v.push(`400 param ${JSON.stringify(param.slice(0, 120))} names nothing the caller sent`);
    }
  }

  if (c.expect === 'refused' && (o.status < 400 || o.status >= 500)) {
    v.push(`unstorable text answered ${o.status}, not a 4xx: ${o.body.subarray(0, 200).toString('utf8')}`);
  }
  if (c.expect === 'valid') {
    if (o.status !== 200) v.push(`valid request answered ${o.status}: ${o.body.subarray(0, 300).toString('utf8')}`);
    else v.push(...imagesProblems(o, c.images ?? 1));
  } else if (o.status === 200 && c.method === 'POST' && !c.raw && /^\/v1\/images\/generations\/?$/i.test(c.path)) {
    // A mutation that happened to stay valid must still be a real answer.
    v.push(...(/^text\/event-stream\b/.test(header(o.headers, 'content-type') ?? '') ? streamProblems(o) : imagesProblems(o, undefined)));
  }
  return v;
}

/**
 * A 200 that streams (`stream: true`) has sent its status before the work
 * ends, so a failure arrives as an event: it must still be the error
 * object, and never our own crash (server_error).
 */
function streamProblems(o: Outcome): string[] {
  const events: unknown[] = [];
  for (const line of o.body.toString('utf8').split(/\r?\n/)) {
    if (!line.startsWith('data:')) continue;
    const data = line.slice(5).trim();
    if (data === '[DONE]') continue;
    try {
      events.push(JSON.parse(data));
    } catch {
      return [`stream event is not JSON: ${JSON.stringify(data.slice(0, 120))}`];
    }
  }
  if (events.length === 0) return ['200 stream without events'];
  for (const e of events) {
    const err = (e as { error?: unknown }).error;
    if (err === undefined) continue;
    const keys = err && typeof err === 'object' ? Object.keys(err).sort().join() : '';
    if (keys !== ERROR_KEYS.join()) return [`stream error event is not the error object: ${JSON.stringify(e).slice(0, 200)}`];
    if ((err as { type?: unknown }).type === 'server_error') return [`stream ended in a server error: ${JSON.stringify(e).slice(0, 200)}`];
  }
  return [];
}

function imagesProblems(o: Outcome, expected: number | undefined): string[] {
  let parsed: { data?: unknown };
  try {
    parsed = JSON.parse(o.body.toString('utf8')) as { data?: unknown };
  } catch {
    return ['200 body is not JSON'];
  }
  const data = parsed.data;
  if (!Array.isArray(data) || data.length === 0) return [`200 without images: ${JSON.stringify(parsed).slice(0, 200)}`];
  if (expected !== undefined && data.length !== expected) return [`asked for ${expected} images, got ${data.length}`];
  for (const item of data) {
    const i = item as { url?: unknown; b64_json?: unknown };
    if (typeof i.url !== 'string' && typeof i.b64_json !== 'string') return [`image without url or b64_json: ${JSON.stringify(item).slice(0, 200)}`];
  }
  return [];
}

// ---------------------------------------------------------------- prototype pollution

/**
 * Taken before a run: a probe object and the own keys of the built-in
 * prototypes. After the run, the probe must still be empty and no prototype
 * may have gained a key.
 */
export function pollutionProbe(): { check(): string[] } {
  const probe: Record<string, unknown> = {};
  const protos: Array<[string, object]> = [
    ['Object.prototype', Object.prototype],
    ['Array.prototype', Array.prototype],
    ['Function.prototype', Function.prototype],
    ['String.prototype', String.prototype],
  ];
  const before = new Map(protos.map(([n, p]) => [n, new Set(Reflect.ownKeys(p))]));
  return {
    check() {
      const problems: string[] = [];
      if (({} as Record<string, unknown>)[POLLUTION_MARK] !== undefined) problems.push(`({}).${POLLUTION_MARK} is defined`);
      if (probe[POLLUTION_MARK] !== undefined || Object.keys(probe).length > 0) problems.push('the probe object gained keys');
      for (const [name, p] of protos) {
        const added = Reflect.ownKeys(p).filter((k) => !before.get(name)!.has(k));
        if (added.length > 0) problems.push(`${name} gained ${added.map(String).join(', ')}`);
      }
      return problems;
    },
  };
}

// ---------------------------------------------------------------- the run

export interface RunOptions {
  url: string;
  seed: number;
  cases: number;
  /** First index; a replay of one case is `{first: i, cases: 1}`. */
  first?: number;
  concurrency: number;
  gen: GeneratorOptions;
  timeoutMs?: number;
  /** Failures kept in full (all are counted). */
  keepFailures?: number;
  onCase?: (c: FuzzCase, o: Outcome, violations: string[]) => void;
}

export interface RunReport {
  seed: number;
  cases: number;
  elapsedMs: number;
  statuses: Map<string, number>;
  failureCount: number;
  failures: Failure[];
  /** Slowest answers, for spotting near-hangs. */
  maxMs: number;
}

/** A deliberately incomplete request the server closed without answering is counted apart from a failure to answer. */
export function statusKey(c: FuzzCase, o: Outcome): string {
  if (o.status !== null) return String(o.status);
  return c.mayHangUp ? 'closed (allowed)' : 'no answer';
}

export async function runFuzz(opts: RunOptions): Promise<RunReport> {
  const t = targetOf(opts.url);
  const agent = createAgent(opts.concurrency);
  const first = opts.first ?? 0;
  const end = first + opts.cases;
  const keep = opts.keepFailures ?? 200;
  const statuses = new Map<string, number>();
  const failures: Failure[] = [];
  let failureCount = 0;
  let maxMs = 0;
  let next = first;
  const started = performance.now();
  const worker = async () => {
    while (next < end) {
      const c = generateCase(opts.seed, next++, opts.gen);
      const o = await send(t, agent, c, opts.timeoutMs);
      const violations = judge(c, o);
      const key = statusKey(c, o);
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
      maxMs = Math.max(maxMs, o.ms);
      if (violations.length > 0) {
        failureCount++;
        if (failures.length < keep) failures.push({ fuzzCase: c, outcome: o, violations });
      }
      opts.onCase?.(c, o, violations);
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return { seed: opts.seed, cases: opts.cases, elapsedMs: performance.now() - started, statuses, failureCount, failures, maxMs };
}

function caseSize(c: FuzzCase): number {
  return (c.raw?.length ?? 0) + (c.body === undefined ? 0 : Buffer.byteLength(c.body)) + c.path.length;
}

/** The first violation's words without the values in it: "400 param names nothing..." rather than the param itself. */
function violationKind(v: string): string {
  return v.replace(/"[^"]*"/g, '""').replace(/\d+/g, 'N').slice(0, 60);
}

/**
 * Picks the smallest failure and shrinks it further (dropping body fields,
 * halving strings) while it keeps failing the same way.
 */
export async function smallestFailure(url: string, failures: Failure[], maxSends = 150): Promise<Failure | undefined> {
  const sorted = [...failures].sort((a, b) => caseSize(a.fuzzCase) - caseSize(b.fuzzCase));
  let best = sorted[0];
  if (!best) return undefined;
  const kind = violationKind(best.violations[0] ?? '');
  const t = targetOf(url);
  const agent = createAgent(1);
  let sends = 0;
  try {
    let improved = true;
    while (improved && sends < maxSends) {
      improved = false;
      for (const candidate of shrinkCandidates(best.fuzzCase)) {
        if (++sends > maxSends) break;
        const o = await send(t, agent, candidate);
        const v = judge(candidate, o);
        if (v.some((x) => violationKind(x) === kind)) {
          best = { fuzzCase: { ...candidate, label: `${best.fuzzCase.label} (shrunk)` }, outcome: o, violations: v };
          improved = true;
          break;
        }
      }
    }
  } finally {
    agent.destroy();
  }
  return best;
}

function shown(b: Buffer | string, max = 600): string {
  const text = Buffer.isBuffer(b) ? b.toString('latin1') : b;
  const cut = text.length > max ? `${text.slice(0, max)}… (${Buffer.byteLength(b)} bytes in all)` : text;
  return JSON.stringify(cut);
}

export function describeFailure(seed: number, f: Failure): string {
  const c = f.fuzzCase;
  const lines = [
    `seed ${seed}, case #${c.index} [${c.label}]`,
    `  replay: FUZZ_SEED=${seed} FUZZ_FIRST=${c.index} FUZZ_CASES=1 node scripts/run-tests.mjs test/fuzz`,
    `  violations: ${f.violations.join('; ')}`,
  ];
  if (c.raw) lines.push(`  raw request: ${shown(c.raw)}`);
  else {
    lines.push(`  ${c.method} ${c.path.length > 300 ? `${c.path.slice(0, 300)}…` : c.path}`);
    for (const [k, v] of Object.entries(c.headers)) lines.push(`  ${k}: ${shown(Array.isArray(v) ? v.join(' | ') : v, 200)}`);
    if (c.body !== undefined) lines.push(`  body: ${shown(c.body)}`);
  }
  lines.push(`  → ${f.outcome.status ?? 'no answer'} ${shown(f.outcome.body, 400)}`);
  return lines.join('\n');
}

/** Failures grouped by what went wrong, with a few case numbers each. */
export function summarizeFailures(failures: Failure[]): string {
  const groups = new Map<string, number[]>();
  for (const f of failures) {
    const k = violationKind(f.violations[0] ?? '');
    const list = groups.get(k) ?? [];
    list.push(f.fuzzCase.index);
    groups.set(k, list);
  }
  return [...groups].map(([k, ids]) => `  ${ids.length}× ${k} (cases ${ids.slice(0, 5).join(', ')}${ids.length > 5 ? ', …' : ''})`).join('\n');
}

// ---------------------------------------------------------------- the service process

export interface MemorySample {
  /** Milliseconds since the service started. */
  t: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
}

export interface TargetCheck {
  pollution: string[];
  errorLines: number;
  firstError?: string;
}

export interface FuzzTarget {
  url: string;
  gen: GeneratorOptions;
  memory: MemorySample[];
  /** Set once the process has exited; a fuzz run that sees it set has crashed the service. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  check(): Promise<TargetCheck>;
  /**
   * Between batches only (nothing in flight): clears the emulator's job and
   * billing records, runs a full GC (with --expose-gc) and samples memory.
   */
  collect(): Promise<MemorySample | undefined>;
  stop(): Promise<void>;
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Starts test/fuzz/target.ts (a real service and emulator) in a child process, on SQLite unless given a PostgreSQL URL. */
export async function startFuzzTarget(opts: { maxBodyBytes?: number; exposeGc?: boolean; databaseUrl?: string | undefined } = {}): Promise<FuzzTarget> {
  const args = ['--import', 'tsx', ...(opts.exposeGc ? ['--expose-gc'] : []), fileURLToPath(new URL('./target.ts', import.meta.url))];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, FUZZ_MAX_BODY_BYTES: String(opts.maxBodyBytes ?? 1024 * 1024), FUZZ_DATABASE_URL: opts.databaseUrl ?? '' },
  });
  const memory: MemorySample[] = [];
  const waiters = new Map<string, Array<(msg: Record<string, unknown>) => void>>();
  const target: Partial<FuzzTarget> & { memory: MemorySample[]; exit: FuzzTarget['exit'] } = { memory, exit: undefined };
  const exited = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      target.exit = { code, signal };
      for (const list of waiters.values()) for (const w of list) w({ type: 'exit' });
      waiters.clear();
      resolve();
    });
  });
  const next = (type: string) =>
    new Promise<Record<string, unknown>>((resolve) => {
      if (target.exit) return resolve({ type: 'exit' });
      const list = waiters.get(type) ?? [];
      list.push(resolve);
      waiters.set(type, list);
    });
  child.on('message', (msg: Record<string, unknown>) => {
    if (msg['type'] === 'memory') memory.push(msg as unknown as MemorySample);
    const list = waiters.get(String(msg['type']));
    if (list) {
      waiters.delete(String(msg['type']));
      for (const w of list) w(msg);
    }
  });
  const ready = await next('ready');
  if (ready['type'] !== 'ready') throw new Error(`the fuzz target exited before it was ready (${JSON.stringify(target.exit)})`);
  target.url = String(ready['url']);
  target.gen = {
    userKey: String(ready['userKey']),
    adminKey: String(ready['adminKey']),
    otherKey: String(ready['otherKey']),
    maxBodyBytes: Number(ready['maxBodyBytes']),
  };
  target.check = async () => {
    const answer = next('checked');
    child.send({ type: 'check' });
    const msg = await answer;
    if (msg['type'] === 'exit') return { pollution: [], errorLines: 0, firstError: `the service exited (${JSON.stringify(target.exit)})` };
    return msg as unknown as TargetCheck;
  };
  target.collect = async () => {
    const answer = next('gc_done');
    child.send({ type: 'gc' });
    await answer;
    return memory[memory.length - 1];
  };
  target.stop = async () => {
    if (!target.exit) child.send({ type: 'stop' });
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(killer);
  };
  return target as FuzzTarget;
}
