/**
 * A `fetch` that writes down every answer the probe gets: status, fal's
 * headers, and small JSON/text bodies. `@fal-ai/client` hides most of this
 * (cancel's answer, the billable units of a result, the hints on an error),
 * and its only hook that sees every call is its `fetch`, so the probe hands
 * it this one. Plain calls (the Platform API listing, downloads) go through
 * the same recorder.
 *
 * Every call gets its own deadline, so a host that never answers fails the
 * call (TimeoutError, which the client does not retry) instead of hanging.
 * Request headers are never recorded except a harmless allow-list: the
 * Authorization header (the fal key) must never reach a report.
 */
import type { FetchLike } from '../../src/fal/redirect-fetch.js';

/** Response headers the report is about. */
export const RECORDED_HEADERS = [
  'x-fal-request-id',
  'x-fal-billable-units',
  'x-fal-error-type',
  'x-fal-retryable',
  'x-fal-request-timeout-type',
  'content-type',
] as const;

/** Request headers worth showing (never credentials). */
export const RECORDED_SENT_HEADERS = ['x-fal-request-timeout', 'x-fal-object-lifecycle-preference', 'x-fal-queue-priority'] as const;

/** Bodies above this are not kept (images, big outputs). */
const BODY_LIMIT = 64 * 1024;

export interface CallRecord {
  seq: number;
  method: string;
  /** The URL the caller meant (before any redirecting fetch underneath). */
  url: string;
  sent: Record<string, string>;
  status?: number;
  headers: Record<string, string>;
  /** Parsed JSON, or text, for small JSON/text answers. */
  body?: unknown;
  /** Set when no answer came (network error, the call's deadline). */
  error?: string;
  ms: number;
}

export interface FetchRecorder {
  readonly fetch: FetchLike;
  readonly calls: readonly CallRecord[];
  /** Position to pass to `since`. */
  mark(): number;
  /** Calls made after `mark`, oldest first. */
  since(mark: number): CallRecord[];
  /** Waits until the bodies of answered calls have been read. */
  settled(): Promise<void>;
}

export interface RecorderOptions {
  /** Deadline of one HTTP call, headers and body; default 30 s. */
  callTimeoutMs?: number;
  /** Whether to keep the body of a call to this URL; default all (small JSON/text ones). */
  keepBody?: (url: string) => boolean;
}

/** Hosts whose query strings are plain parameters; elsewhere (signed upload URLs) the query is dropped from records. */
const PLAIN_QUERY_HOSTS = new Set(['queue.fal.run', 'fal.run', 'api.fal.ai', 'rest.fal.ai']);

/** The URL as a record shows it: no query string unless it is one of fal's API hosts. */
export function recordableUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.search === '' || PLAIN_QUERY_HOSTS.has(u.hostname)) return url;
    return `${u.origin}${u.pathname}?…`;
  } catch {
    return url;
  }
}

/** A readable one-liner for a thrown value, following `cause` (undici hides the socket error there). */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  const seen = new Set<unknown>();
  let cur: unknown = err;
  while (cur !== undefined && cur !== null && !seen.has(cur) && parts.length < 4) {
    seen.add(cur);
    if (cur instanceof Error || (typeof cur === 'object' && 'message' in cur)) {
      const e = cur as { name?: string; message?: string; code?: unknown };
      const code = typeof e.code === 'string' ? ` (${e.code})` : '';
      const text = `${e.name && e.name !== 'Error' ? `${e.name}: ` : ''}${e.message ?? ''}${code}`;
      if (text && !parts.includes(text)) parts.push(text);
      cur = (cur as { cause?: unknown }).cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(' <- ') || 'unknown error';
}

function urlOf(input: string | URL | Request): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
}

export function createFetchRecorder(inner: FetchLike, opts: RecorderOptions = {}): FetchRecorder {
  const timeoutMs = opts.callTimeoutMs ?? 30_000;
  const calls: CallRecord[] = [];
  const pending = new Set<Promise<void>>();

  const recorded: FetchLike = async (input, init) => {
    const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    const sentHeaders = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    const sent: Record<string, string> = {};
    for (const name of RECORDED_SENT_HEADERS) {
      const v = sentHeaders.get(name);
      if (v !== null) sent[name] = v;
    }
    const url = urlOf(input);
    const record: CallRecord = { seq: calls.length + 1, method, url: recordableUrl(url), sent, headers: {}, ms: 0 };
    calls.push(record);
    const started = Date.now();
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = init?.signal ? AbortSignal.any([init.signal, deadline]) : deadline;
    let res: Response;
    try {
      res = await inner(input, { ...init, signal });
    } catch (err) {
      record.ms = Date.now() - started;
      record.error = deadline.aborted ? `no answer within ${timeoutMs} ms` : describeError(err);
      throw err;
    }
    record.ms = Date.now() - started;
    record.status = res.status;
    for (const name of RECORDED_HEADERS) {
      const v = res.headers.get(name);
      if (v !== null) record.headers[name] = v;
    }
    const type = res.headers.get('content-type') ?? '';
    const length = Number(res.headers.get('content-length') ?? '0');
    const keep = opts.keepBody?.(url) ?? true;
    if (keep && (type.includes('json') || type.startsWith('text/plain')) && length <= BODY_LIMIT && res.body) {
      const copy = res.clone();
      const read = copy
        .text()
        .then((text) => {
          if (text.length > BODY_LIMIT) return;
          try {
            record.body = JSON.parse(text);
          } catch {
            record.body = text;
          }
        })
        .catch(() => {
          // The caller's own read reports a broken body; the record just has none.
        })
        .finally(() => pending.delete(read));
      pending.add(read);
    }
    return res;
  };

  return {
    fetch: recorded,
    calls,
    mark: () => calls.length,
    since: (mark) => calls.slice(mark),
    async settled() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
