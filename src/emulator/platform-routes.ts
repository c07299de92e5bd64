/**
 * fal's Platform API on `api.fal.ai`, the part a gateway needs to find a
 * request whose submit answer was lost: `GET /v1/models/requests/by-endpoint`
 * lists an endpoint's requests in a time window, page by page
 * (https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint).
 * Queue and fal.run jobs are both listed, since fal records both.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx, Route } from './context.js';
import { sendJson } from './http.js';
import type { JobRecord } from './jobs.js';
import { composeOutput } from './output.js';
import { authorize } from './queue-routes.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const STATUSES = ['success', 'error', 'user_error'] as const;
const SORTS = ['ended_at', 'duration'] as const;
const EXPANSIONS = ['payloads'] as const;
type RequestStatus = (typeof STATUSES)[number];

interface FieldError {
  loc: string[];
  msg: string;
  type: string;
  ctx?: Record<string, unknown>;
}

export async function platform(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  ctx.calls.platform += 1;
  const path = route.segments.join('/');
  if (path !== 'v1/models/requests/by-endpoint') {
    sendJson(res, 404, { detail: `The fal emulator serves only GET /v1/models/requests/by-endpoint on api.fal.ai; no route for /${path}` });
    return;
  }
  if (req.method !== 'GET') {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'GET' });
    return;
  }
  if (!authorize(ctx, req, res, randomUUID())) return;
  const q = parseQuery(route.query, Date.now());
  if (!q.ok) {
    sendJson(res, 422, { detail: q.errors });
    return;
  }
  const { endpointId, start, end, limit, page, status, requestId, payloads, sortBy } = q.value;
  const matching = ctx.engine.list().filter((job) => {
    if (job.endpoint !== endpointId) return false;
    if (job.submitted_at < start || (end !== undefined && job.submitted_at >= end)) return false;
    if (requestId !== undefined && job.request_id !== requestId) return false;
    return status === undefined || statusClass(job) === status;
  });
  matching.sort(sortBy === 'duration' ? byDuration : byEndedAt);
  const offset = (page - 1) * limit;
  const items = await Promise.all(matching.slice(offset, offset + limit).map((job) => item(ctx, job, payloads)));
  const hasMore = offset + limit < matching.length;
  sendJson(res, 200, { items, next_cursor: hasMore ? encodeCursor(page + 1) : null, has_more: hasMore });
}

const ended = (job: JobRecord): number | undefined => (job.status === 'COMPLETED' ? job.completed_at : undefined);

function statusCode(job: JobRecord): number | null {
  if (ended(job) === undefined) return null;
  return job.outcome === 'ok' ? 200 : (job.error?.status ?? 500);
}

/** fal's status filter: 2xx success, 4xx the caller's fault, anything else an error; unfinished requests have none. */
function statusClass(job: JobRecord): RequestStatus | undefined {
  const code = statusCode(job);
  if (code === null) return undefined;
  if (code >= 200 && code < 300) return 'success';
  if (code >= 400 && code < 500) return 'user_error';
  return 'error';
}

const duration = (job: JobRecord): number | undefined => {
  const at = ended(job);
  return at === undefined ? undefined : at - job.submitted_at;
};

/** Descending, unfinished requests (no value yet) first; ties newest submitted first. */
function descNullsFirst(a: number | undefined, b: number | undefined): number {
  if (a === undefined || b === undefined) return (a === undefined ? 0 : 1) - (b === undefined ? 0 : 1);
  return b - a;
}
const newestFirst = (a: JobRecord, b: JobRecord) => b.submitted_at - a.submitted_at || b.seq - a.seq;
const byEndedAt = (a: JobRecord, b: JobRecord) => descNullsFirst(ended(a), ended(b)) || newestFirst(a, b);
const byDuration = (a: JobRecord, b: JobRecord) => descNullsFirst(duration(a), duration(b)) || newestFirst(a, b);

const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());

async function item(ctx: Ctx, job: JobRecord, payloads: boolean): Promise<Record<string, unknown>> {
  const endedAt = ended(job);
  const took = duration(job);
  const out: Record<string, unknown> = {
    request_id: job.request_id,
    endpoint_id: job.endpoint,
    sent_at: iso(job.submitted_at),
    started_at: iso(job.started_at),
    ended_at: iso(endedAt),
    status_code: statusCode(job),
    duration: took === undefined ? null : took / 1000,
  };
  // A job submitted with `X-Fal-Store-IO: 0` has no stored payloads (fal's media-expiration docs, "Preventing Payload Storage").
  if (payloads && job.store_io === false) {
    out.json_input = null;
    out.json_output = null;
  } else if (payloads) {
    out.json_input = job.input;
    out.json_output =
      endedAt === undefined ? null : job.outcome === 'ok' ? await composeOutput(ctx, job) : (job.error?.body ?? null);
  }
  return out;
}

export function encodeCursor(page: number): string {
  return Buffer.from(String(page)).toString('base64');
}

/** fal's cursor is base64 of a page number ("Mg==" is page 2); anything else is refused. */
export function decodeCursor(cursor: string): number | undefined {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(cursor)) return undefined;
  const text = Buffer.from(cursor, 'base64').toString('latin1');
  if (!/^[1-9][0-9]{0,8}$/.test(text) || encodeCursor(Number(text)) !== cursor) return undefined;
  return Number(text);
}

const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?([Zz]|[+-]\d{2}(?::?\d{2})?)?)?$/;

/**
 * ISO 8601 as fal's docs show it: a date (`2025-01-01`, midnight UTC) or a
 * date-time (`2025-01-01T00:00:00Z`, offset optional, UTC when absent).
 * Strict: impossible dates (`2025-02-30`) and other formats are undefined.
 */
export function parseIsoDate(text: string): number | undefined {
  const m = ISO_RE.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h = '0', mi = '0', s = '0', frac = '', tz = 'Z'] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = Number(h);
  const minute = Number(mi);
  const second = Number(s);
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return undefined;
  // setUTCFullYear, unlike Date.UTC, keeps years 0..99 as they are.
  const at = new Date(0);
  at.setUTCFullYear(year, month - 1, day);
  if (at.getUTCFullYear() !== year || at.getUTCMonth() !== month - 1 || at.getUTCDate() !== day) return undefined;
  let offsetMin = 0;
  if (tz.toUpperCase() !== 'Z') {
    const digits = tz.slice(1).replace(':', '');
    const oh = Number(digits.slice(0, 2));
    const om = digits.length > 2 ? Number(digits.slice(2)) : 0;
    if (oh > 23 || om > 59) return undefined;
    offsetMin = (tz.startsWith('-') ? -1 : 1) * (oh * 60 + om);
  }
  at.setUTCHours(hour, minute, second, Number(frac.padEnd(3, '0').slice(0, 3)));
  return at.getTime() - offsetMin * 60000;
}

interface ListQuery {
  endpointId: string;
  start: number;
  end: number | undefined;
  limit: number;
  page: number;
  status: RequestStatus | undefined;
  requestId: string | undefined;
  payloads: boolean;
  sortBy: (typeof SORTS)[number];
}

/** Validates the query like fal's FastAPI does: every problem at once, as a 422 `detail` list. */
export function parseQuery(query: URLSearchParams, now: number): { ok: true; value: ListQuery } | { ok: false; errors: FieldError[] } {
  const errors: FieldError[] = [];
  const fail = (name: string, msg: string, type: string, extra?: Record<string, unknown>) =>
    errors.push({ loc: ['query', name], msg, type, ...(extra ? { ctx: extra } : {}) });

  const endpointId = query.get('endpoint_id') ?? '';
  if (endpointId === '') fail('endpoint_id', 'field required', 'value_error.missing');

  const date = (name: 'start' | 'end'): number | undefined => {
    const raw = query.get(name);
    if (raw === null || raw === '') return undefined;
    const at = parseIsoDate(raw);
    if (at === undefined) fail(name, `invalid date: ${JSON.stringify(raw)} is not an ISO 8601 date or date-time`, 'value_error.datetime');
    return at;
  };
  const start = date('start') ?? now - DAY_MS;
  const end = date('end');

  let limit = 50;
  const rawLimit = query.get('limit');
  if (rawLimit !== null) {
    if (!/^-?[0-9]+$/.test(rawLimit)) fail('limit', 'value is not a valid integer', 'type_error.integer');
    else {
      limit = Number(rawLimit);
      if (limit < 1) fail('limit', 'ensure this value is greater than or equal to 1', 'value_error.number.not_ge', { limit_value: 1 });
      else if (limit > 100) fail('limit', 'ensure this value is less than or equal to 100', 'value_error.number.not_le', { limit_value: 100 });
    }
  }

  let page = 1;
  const rawCursor = query.get('cursor');
  if (rawCursor !== null && rawCursor !== '') {
    const p = decodeCursor(rawCursor);
    if (p === undefined) fail('cursor', 'invalid cursor: pass the next_cursor of a previous page', 'value_error.cursor');
    else page = p;
  }

  const rawStatus = query.get('status');
  let status: RequestStatus | undefined;
  if (rawStatus !== null && rawStatus !== '') {
    if ((STATUSES as readonly string[]).includes(rawStatus)) status = rawStatus as RequestStatus;
    else fail('status', `value is not a valid enumeration member; permitted: ${STATUSES.map((s) => `'${s}'`).join(', ')}`, 'type_error.enum');
  }

  const rawSort = query.get('sort_by');
  let sortBy: ListQuery['sortBy'] = 'ended_at';
  if (rawSort !== null && rawSort !== '') {
    if ((SORTS as readonly string[]).includes(rawSort)) sortBy = rawSort as ListQuery['sortBy'];
    else fail('sort_by', `value is not a valid enumeration member; permitted: ${SORTS.map((s) => `'${s}'`).join(', ')}`, 'type_error.enum');
  }

  // `expand` may be repeated or comma-separated, like fal's other list parameters.
  const expand = query
    .getAll('expand')
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v !== '');
  for (const e of expand) {
    if (!(EXPANSIONS as readonly string[]).includes(e)) {
      fail('expand', `value is not a valid enumeration member; permitted: ${EXPANSIONS.map((s) => `'${s}'`).join(', ')}`, 'type_error.enum');
    }
  }

  const requestId = query.get('request_id') || undefined;
  if (errors.length > 0) return { ok: false, errors };
  return {
    ok: true,
    value: { endpointId, start, end, limit, page, status, requestId, payloads: expand.includes('payloads'), sortBy },
  };
}
