/**
 * Delivers the outbox's billing events to `BILLING_WEBHOOK_URL`, signed per
 * Standard Webhooks (https://www.standardwebhooks.com): headers
 * `webhook-id`, `webhook-timestamp` (Unix seconds of the attempt) and
 * `webhook-signature` = `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
 *
 * At least once, in order per key: the outbox hands out only the oldest
 * undelivered event of each key and leases it, so one key never has two
 * deliveries in flight (in this process or any other) and a later event
 * waits until the earlier one got a 2xx. Anything else is retried with the
 * same id and body, after an exponential, jittered, capped delay, forever:
 * a billing event is never dropped.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../db/values.js';
import type { OutboxEvent, OutboxStore } from './outbox-store.js';

export interface BackoffOptions {
  /** Delay after the first failed attempt (default 1 s); doubles per attempt. */
  baseMs?: number | undefined;
  /** The longest delay between attempts (default 1 h). */
  maxMs?: number | undefined;
  /** Source of randomness for jitter, in [0, 1) (tests pin it). */
  random?: (() => number) | undefined;
}

export interface BillingWebhookOptions {
  outbox: OutboxStore;
  url: string;
  /** `whsec_<base64>` (the base64 part is the key) or any other string (its UTF-8 bytes are the key). */
  secret: string;
  fetchImpl?: typeof fetch | undefined;
  logger: Logger;
  clock?: Clock | undefined;
  /** How often to look for due events besides kicks (other processes' events, retries). Default 1 s. */
  pollMs?: number | undefined;
  backoff?: BackoffOptions | undefined;
  /** Events claimed per round, i.e. keys delivered to in parallel. Default 16. */
  batch?: number | undefined;
  /**
   * One attempt's time limit (default 15 s). Must stay well under the
   * outbox lease (60 s), or a slow attempt could be re-offered while it is
   * still in flight.
   */
  attemptTimeoutMs?: number | undefined;
}

export interface BillingWebhookWorker {
  start(): void;
  /** Stops polling and waits for the round in progress. */
  stop(): Promise<void>;
  /**
   * Delivers what is due now, round after round, until a round finds nothing
   * to deliver or `timeoutMs` passes; attempts still running then are
   * abandoned (and retried later with the same id). Failures are not waited
   * out: they stay in the outbox for the next start.
   */
  flush(timeoutMs: number): Promise<void>;
  /** New events were committed: look now instead of at the next poll. */
  kick(): void;
}

const WHSEC = 'whsec_';
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The HMAC key a secret stands for; throws on a `whsec_` secret whose base64 is malformed. */
export function webhookSigningKey(secret: string): Buffer {
  if (secret.startsWith(WHSEC)) {
    const encoded = secret.slice(WHSEC.length);
    // Buffer.from(…, 'base64') skips what it cannot read; a typo would
    // silently become another key.
    if (encoded.length === 0 || !BASE64.test(encoded)) throw new Error('a whsec_ secret must be followed by standard base64');
    return Buffer.from(encoded, 'base64');
  }
  if (secret.length === 0) throw new Error('the webhook secret is empty');
  return Buffer.from(secret, 'utf8');
}

/** The `webhook-signature` value for one attempt. */
export function signStandardWebhook(secret: string | Buffer, id: string, timestampS: number, body: string): string {
  const key = typeof secret === 'string' ? webhookSigningKey(secret) : secret;
  const mac = createHmac('sha256', key).update(`${id}.${timestampS}.${body}`, 'utf8').digest('base64');
  return `v1,${mac}`;
}

export interface VerifyOptions {
  /** Largest accepted distance between `webhook-timestamp` and now (default 300 s). */
  toleranceS?: number;
  now?: () => number;
}

/**
 * What a receiver does: true when the headers carry a `v1` signature of this
 * exact body (the raw bytes, before any JSON parsing) under `secret`, with a
 * timestamp within the tolerance. Several space-separated signatures are
 * allowed (secret rotation); one match is enough.
 */
export function verifyStandardWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined> | Headers,
  body: string | Buffer,
  options: VerifyOptions = {},
): boolean {
  const header = (name: string): string | undefined => {
    const v = headers instanceof Headers ? headers.get(name) ?? undefined : headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  const id = header('webhook-id');
  const timestamp = header('webhook-timestamp');
  const signatures = header('webhook-signature');
  if (!id || !timestamp || !signatures || !/^\d+$/.test(timestamp)) return false;
  const nowS = Math.floor((options.now ?? Date.now)() / 1000);
  if (Math.abs(nowS - Number(timestamp)) > (options.toleranceS ?? 300)) return false;
  const expected = Buffer.from(signStandardWebhook(secret, id, Number(timestamp), body.toString()).slice(3), 'base64');
  return signatures.split(' ').some((entry) => {
    const [version, mac] = entry.split(',', 2);
    if (version !== 'v1' || !mac) return false;
    const given = Buffer.from(mac, 'base64');
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

/**
 * Delay before the next attempt after `attempts` failed ones: base × 2^(n-1),
 * capped, then "equal jitter" (between half and all of it) so that keys that
 * failed together do not retry in lockstep against a receiver coming back.
 */
export function backoffDelayMs(attempts: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? 1000;
  const max = options.maxMs ?? 3_600_000;
  const exponent = Math.min(Math.max(attempts - 1, 0), 40);
  const capped = Math.min(max, base * 2 ** exponent);
  const random = options.random ?? Math.random;
  return Math.round(capped / 2 + (capped / 2) * random());
}

/** The JSON the receiver gets: the Standard Webhooks envelope around the event's data. */
export function webhookBody(event: Pick<OutboxEvent, 'eventId' | 'type' | 'createdAt' | 'payload'>): string {
  return JSON.stringify({ id: event.eventId, type: event.type, timestamp: event.createdAt, data: event.payload });
}

interface RoundResult {
  claimed: number;
}

type AttemptOutcome = { ok: true; status: number } | { ok: false; error: string; retryAfterMs?: number };

export function createBillingWebhookWorker(options: BillingWebhookOptions): BillingWebhookWorker {
  const { outbox, url } = options;
  // Derived once, so a malformed secret fails at start-up, not at the first
  // settlement; the secret itself is never logged.
  const key = webhookSigningKey(options.secret);
  const fetchImpl = options.fetchImpl ?? fetch;
  const clock = options.clock ?? systemClock;
  const pollMs = options.pollMs ?? 1000;
  const batch = options.batch ?? 16;
  const attemptTimeoutMs = options.attemptTimeoutMs ?? 15_000;
  const log = options.logger.child({ component: 'billing-webhook' });
  const target = safeTarget(url);

  let running = false;
  let loopDone: Promise<void> | undefined;
  let kicked = false;
  let wake: (() => void) | undefined;
  /** Retry times this process scheduled, so a short backoff is not stretched to the poll interval. */
  let retryTimes: number[] = [];
  const inFlight = new Set<AbortController>();

  // Rounds run one at a time so that `flush` starts after the loop's round
  // and sees its outcome, not a lease it holds.
  let chain: Promise<unknown> = Promise.resolve();
  function serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = chain.then(fn);
    chain = next.catch(() => undefined);
    return next;
  }

  async function attempt(event: OutboxEvent): Promise<AttemptOutcome> {
    const body = webhookBody(event);
    const timestampS = Math.floor(clock().getTime() / 1000);
    const abort = new AbortController();
    inFlight.add(abort);
    try {
      const res = await fetchImpl(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'fal-images-gateway billing-webhook',
          'webhook-id': event.eventId,
          'webhook-timestamp': String(timestampS),
          'webhook-signature': signStandardWebhook(key, event.eventId, timestampS, body),
        },
        body,
        // A redirect is a failure: following it would send billing data
        // somewhere the operator did not configure.
        redirect: 'manual',
        signal: AbortSignal.any([abort.signal, AbortSignal.timeout(attemptTimeoutMs)]),
      });
      // The body is not needed; releasing it frees the connection.
      await res.body?.cancel().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) return { ok: true, status: res.status };
      const retryAfterMs = parseRetryAfter(res.headers.get('retry-after'), clock().getTime());
      const what = res.status >= 300 && res.status < 400 ? ' (redirects are not followed; set BILLING_WEBHOOK_URL to the final address)' : '';
      return { ok: false, error: `HTTP ${res.status}${what}`, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
    } catch (err) {
      return { ok: false, error: describeFetchError(err) };
    } finally {
      inFlight.delete(abort);
    }
  }

  async function deliver(event: OutboxEvent): Promise<void> {
    const outcome = await attempt(event);
    if (outcome.ok) {
      await outbox.markDelivered(event.seq);
      log.debug({ event_id: event.eventId, key_id: event.keyId, attempts: event.attempts, status: outcome.status }, 'billing event delivered');
      return;
    }
    const backoff = backoffDelayMs(event.attempts, options.backoff);
    const maxMs = options.backoff?.maxMs ?? 3_600_000;
    // Retry-After may lengthen the wait, but never past our own cap: a
    // receiver must not be able to park billing events for days.
    const delay = outcome.retryAfterMs === undefined ? backoff : Math.max(backoff, Math.min(outcome.retryAfterMs, maxMs));
    const next = clock().getTime() + delay;
    await outbox.markFailed(event.seq, outcome.error, next);
    retryTimes.push(next);
    log[event.attempts >= 10 ? 'error' : 'warn'](
      { event_id: event.eventId, key_id: event.keyId, attempts: event.attempts, error: outcome.error, retry_in_ms: delay, target },
      'billing event not delivered; will retry',
    );
  }

  async function round(): Promise<RoundResult> {
    const events = await outbox.claimDue(batch);
    // Claimed events belong to distinct keys, so they can go in parallel
    // without breaking any key's order.
    await Promise.all(
      events.map((e) =>
        deliver(e).catch((err: unknown) => {
          // The outcome could not be recorded; the lease runs out and the
          // event is offered again with the same id.
          log.error({ err, event_id: e.eventId }, 'billing event outcome not recorded');
        }),
      ),
    );
    return { claimed: events.length };
  }

  function sleep(ms: number): Promise<void> {
    if (kicked || !running) {
      kicked = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        wake = undefined;
        kicked = false;
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      timer.unref();
      wake = done;
    });
  }

  async function loop(): Promise<void> {
    while (running) {
      let claimed = 0;
      try {
        ({ claimed } = await serial(round));
      } catch (err) {
        log.error({ err }, 'billing outbox could not be read');
      }
      if (!running) break;
      if (claimed > 0) continue;
      // Times already past were claimed (or taken by another process) in
      // the round that just found nothing; only future ones matter.
      const now = clock().getTime();
      retryTimes = retryTimes.filter((t) => t > now);
      await sleep(Math.min(pollMs, ...retryTimes.map((t) => t - now)));
    }
  }

  return {
    start() {
      if (running) return;
      running = true;
      log.info({ target }, 'billing webhook delivery started');
      loopDone = loop();
    },

    async stop() {
      running = false;
      wake?.();
      await loopDone;
      loopDone = undefined;
    },

    async flush(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      const timer = setTimeout(() => {
        for (const a of inFlight) a.abort(new Error('billing webhook flush deadline'));
      }, timeoutMs);
      try {
        while (Date.now() < deadline) {
          const { claimed } = await serial(round);
          if (claimed === 0) break;
        }
      } catch (err) {
        log.error({ err }, 'billing outbox could not be flushed');
      } finally {
        clearTimeout(timer);
      }
      const left = await outbox.pending().catch(() => undefined);
      if (left) log.warn({ pending: left }, 'billing events left undelivered; they are sent after the next start');
    },

    kick() {
      kicked = true;
      wake?.();
    },
  };
}

/** Scheme, host and path only: a URL may carry credentials in its user-info or query. */
function safeTarget(raw: string): string {
  try {
    const u = new URL(raw);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(unparseable URL)';
  }
}

function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

function describeFetchError(err: unknown): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError') return 'timed out';
  if (e?.name === 'AbortError') return 'aborted';
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e.message ?? 'fetch failed'}: ${cause}` : String(e?.message ?? err);
}
