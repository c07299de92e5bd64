import { FalCallError } from './errors.js';
import type { FalCall } from './fal-call.js';

/**
 * fal's request listing (Platform API): an endpoint's requests in a time
 * window, with the input each was sent, page by page
 * (https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint). It is
 * how a submit whose answer was lost is found (REFERENCE §3b): fal may have
 * made, and billed, a job whose id we never saw.
 *
 * `@fal-ai/client` has no call for the Platform API, so this is a plain
 * fetch, made with the call's own fetch (fal-call.ts): `FAL_BASE_URL`
 * reaches the emulator as every other fal call does, and 429, 5xx and
 * network failures are retried there by retry.ts's `listing` policy.
 */

export interface FalListedRequest {
  /** fal's id of the request. */
  requestId: string;
  /** When fal received the request (its `sent_at`), in ms since the epoch; null when fal did not say. */
  sentAtMs: number | null;
  /**
   * The input fal recorded (`json_input`); null when fal stored none (a
   * submit with `X-Fal-Store-IO: 0`, media-expiration docs), so it cannot be
   * matched on its input.
   */
  input: unknown;
}

export interface ListingWindow {
  /** Inclusive, ms since the epoch. */
  start: number;
  /** Exclusive, ms since the epoch. */
  end: number;
}

const LISTING_URL = 'https://api.fal.ai/v1/models/requests/by-endpoint';
/**
 * Items per page. Each item carries its output too (`expand=payloads` has no
 * input-only form), which for a sync_mode job holds its images as base64:
 * small pages bound what one answer holds in memory.
 */
const PAGE_LIMIT = 20;
/** Pages read at most for one window: past this the listing is not trusted to be whole. */
const MAX_PAGES = 200;

/** Every request fal lists for `endpoint` sent within `window`, with its input (output dropped). */
export async function listRequests(c: FalCall, credentials: string | undefined, endpoint: string, window: ListingWindow): Promise<FalListedRequest[]> {
  const out: FalListedRequest[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < MAX_PAGES; page++) {
    const url = new URL(LISTING_URL);
    url.searchParams.set('endpoint_id', endpoint);
    url.searchParams.set('start', new Date(window.start).toISOString());
    url.searchParams.set('end', new Date(window.end).toISOString());
    url.searchParams.set('limit', String(PAGE_LIMIT));
    url.searchParams.set('expand', 'payloads');
    if (cursor !== undefined) url.searchParams.set('cursor', cursor);
    const res = await c.fetch(url.href, { method: 'GET', headers: credentials ? { authorization: `Key ${credentials}` } : {}, signal: c.signal });
    if (!res.ok) {
      const body: unknown = await res.json().catch(() => undefined);
      throw new FalCallError(`fal listing: HTTP ${res.status}`, { ...c.errorInit('http'), body });
    }
    const body = (await res.json().catch(() => undefined)) as { items?: unknown; has_more?: unknown; next_cursor?: unknown } | undefined;
    if (!body || !Array.isArray(body.items)) throw bad(c, 'the answer has no items array');
    for (const item of body.items as unknown[]) out.push(listed(item, c));
    if (body.has_more !== true) return out;
    if (typeof body.next_cursor !== 'string' || body.next_cursor === '') throw bad(c, 'has_more without a next_cursor');
    cursor = body.next_cursor;
  }
  throw bad(c, `more than ${MAX_PAGES * PAGE_LIMIT} requests in the window`);
}

function listed(raw: unknown, c: FalCall): FalListedRequest {
  const item = raw as { request_id?: unknown; sent_at?: unknown; json_input?: unknown } | null;
  if (!item || typeof item.request_id !== 'string' || item.request_id === '') throw bad(c, 'an item has no request_id');
  const sentAt = typeof item.sent_at === 'string' ? Date.parse(item.sent_at) : NaN;
  return { requestId: item.request_id, sentAtMs: Number.isNaN(sentAt) ? null : sentAt, input: item.json_input ?? null };
}

function bad(c: FalCall, what: string): FalCallError {
  return new FalCallError(`fal listing: ${what}`, c.errorInit('bad_response'));
}
