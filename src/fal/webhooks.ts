import { createHash, createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import type { FetchLike } from './redirect-fetch.js';

/**
 * fal's completion callbacks. With them, a waiting job costs no status
 * traffic at all: fal tells us when it is done. fal signs each delivery with
 * ED25519 over `request_id \n user_id \n timestamp \n sha256hex(body)` and
 * publishes its public keys as a JWKS; we verify against those keys, refuse
 * stale timestamps (replays), and treat repeats as no-ops.
 */

export interface FalWebhookEvent {
  requestId: string;
  status: 'OK' | 'ERROR';
}

export class WebhookError extends Error {
  constructor(readonly reason: 'missing_headers' | 'stale_timestamp' | 'bad_signature' | 'bad_body' | 'keys_unavailable', message: string) {
    super(message);
    this.name = 'WebhookError';
  }
}

export interface WebhookVerifierOptions {
  jwksUrl: string;
  fetchImpl: FetchLike;
  /** Accepted clock difference, seconds; older deliveries are replays. */
  toleranceS?: number;
  /** How long fetched keys are trusted before they are fetched again. */
  jwksTtlMs?: number;
  now?: () => number;
}

export interface WebhookVerifier {
  verify(headers: (name: string) => string | undefined, body: Buffer): Promise<FalWebhookEvent>;
}

export function createWebhookVerifier(opts: WebhookVerifierOptions): WebhookVerifier {
  const toleranceS = opts.toleranceS ?? 300;
  const ttl = opts.jwksTtlMs ?? 3_600_000;
  const now = opts.now ?? Date.now;
  let keys: { at: number; list: KeyObject[] } | undefined;
  let fetching: Promise<KeyObject[]> | undefined;

  async function fetchKeys(): Promise<KeyObject[]> {
    fetching ??= (async () => {
      try {
        const res = await opts.fetchImpl(opts.jwksUrl, { signal: AbortSignal.timeout(10_000) });
        if (!res.ok) throw new Error(`JWKS answered ${res.status}`);
        const jwks = (await res.json()) as { keys?: Array<Record<string, unknown>> };
        const list = (jwks.keys ?? [])
          .filter((k) => k.kty === 'OKP' && k.crv === 'Ed25519' && typeof k.x === 'string')
          .map((k) => createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: k.x as string }, format: 'jwk' }));
        if (list.length === 0) throw new Error('JWKS has no Ed25519 keys');
        keys = { at: now(), list };
        return list;
      } finally {
        fetching = undefined;
      }
    })();
    return fetching;
  }

  async function currentKeys(refresh: boolean): Promise<KeyObject[]> {
    if (!refresh && keys && now() - keys.at < ttl) return keys.list;
    try {
      return await fetchKeys();
    } catch (err) {
      if (keys) return keys.list;
      throw new WebhookError('keys_unavailable', `fal's webhook keys could not be fetched: ${(err as Error).message}`);
    }
  }

  return {
    async verify(header, body) {
      const requestId = header('x-fal-webhook-request-id');
      const userId = header('x-fal-webhook-user-id');
      const timestamp = header('x-fal-webhook-timestamp');
      const signature = header('x-fal-webhook-signature');
      if (!requestId || !userId || !timestamp || !signature) throw new WebhookError('missing_headers', 'missing X-Fal-Webhook-* headers');
      if (!/^\d{1,12}$/.test(timestamp) || Math.abs(now() / 1000 - Number(timestamp)) > toleranceS) {
        throw new WebhookError('stale_timestamp', 'webhook timestamp outside the accepted window');
      }
      if (!/^[0-9a-f]{128}$/i.test(signature)) throw new WebhookError('bad_signature', 'malformed signature');
      const digest = createHash('sha256').update(body).digest('hex');
      const message = Buffer.from(`${requestId}\n${userId}\n${timestamp}\n${digest}`, 'utf8');
      const sig = Buffer.from(signature, 'hex');
      const ok = (list: KeyObject[]) => list.some((k) => verifySignature(null, message, k, sig));
      // A key we do not know yet may be a rotation: fetch once more before refusing.
      const stale = keys !== undefined && now() - keys.at > 60_000;
      if (!ok(await currentKeys(false)) && !(stale && ok(await currentKeys(true)))) {
        throw new WebhookError('bad_signature', 'signature does not verify against fal’s keys');
      }
      let parsed: { request_id?: unknown; status?: unknown };
      try {
        parsed = JSON.parse(body.toString('utf8')) as typeof parsed;
      } catch {
        throw new WebhookError('bad_body', 'body is not JSON');
      }
      // The signed header names the job; the body must agree with it.
      if (parsed.request_id !== requestId) throw new WebhookError('bad_body', 'body request_id differs from the signed header');
      return { requestId, status: parsed.status === 'OK' ? 'OK' : 'ERROR' };
    },
  };
}

/**
 * Where a waiting job learns that its callback arrived, in this process.
 * Across replicas, src/fal/completion-relay.ts wraps it and passes callbacks
 * on over Redis; without Redis, a callback that reached another replica
 * leaves the waiter to poll after its grace period.
 */
export interface CompletionHub {
  /**
   * Settles when the callback for `falRequestId` arrives (`notified`), when
   * `signal` aborts (`aborted`) or after `timeoutMs` (`timeout`); never rejects.
   */
  wait(falRequestId: string, signal?: AbortSignal, timeoutMs?: number): Promise<WaitOutcome>;
  /** True when a waiter in this process was woken. */
  notify(falRequestId: string): boolean;
  readonly waiting: number;
}

export type WaitOutcome = 'notified' | 'aborted' | 'timeout';

/**
 * One waiting job: this record, its promise and, with a timeout, its timer.
 * It is its own abort listener (handleEvent).
 */
class Waiter {
  timer: NodeJS.Timeout | undefined;
  constructor(
    readonly id: string,
    readonly hub: Map<string, Waiter | Waiter[]>,
    readonly signal: AbortSignal | undefined,
    private resolve: ((outcome: WaitOutcome) => void) | undefined,
  ) {}

  settle(outcome: WaitOutcome): void {
    const resolve = this.resolve;
    if (!resolve) return;
    this.resolve = undefined;
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this);
    if (outcome !== 'notified') this.unlist();
    resolve(outcome);
  }

  handleEvent(): void {
    this.settle('aborted');
  }

  private unlist(): void {
    const entry = this.hub.get(this.id);
    if (entry === this) this.hub.delete(this.id);
    else if (Array.isArray(entry)) {
      const i = entry.indexOf(this);
      if (i >= 0) entry.splice(i, 1);
      if (entry.length === 1) this.hub.set(this.id, entry[0]!);
    }
  }
}

const MAX_TIMER_MS = 2_147_483_647;

function expire(w: Waiter): void {
  w.settle('timeout');
}

export function createCompletionHub(): CompletionHub {
  // Nearly always one waiter per job: stored bare, an array only for a second.
  const waiters = new Map<string, Waiter | Waiter[]>();
  // Callbacks that beat the waiter (fal can finish before submit's answer is
  // processed): remembered briefly so the wait that follows returns at once.
  const early = new Map<string, number>();
  const EARLY_TTL_MS = 60_000;
  return {
    get waiting() {
      return waiters.size;
    },
    wait(id, signal, timeoutMs) {
      const at = early.get(id);
      if (at !== undefined) {
        early.delete(id);
        if (Date.now() - at < EARLY_TTL_MS) return Promise.resolve('notified');
      }
      if (signal?.aborted) return Promise.resolve('aborted');
      return new Promise<WaitOutcome>((resolve) => {
        const w = new Waiter(id, waiters, signal, resolve);
        const entry = waiters.get(id);
        if (entry === undefined) waiters.set(id, w);
        else if (Array.isArray(entry)) entry.push(w);
        else waiters.set(id, [entry, w]);
        signal?.addEventListener('abort', w, { once: true });
        // Longer than a timer can wait (~24.8 days) is no timeout: Node would fire it at once.
        if (timeoutMs !== undefined && timeoutMs <= MAX_TIMER_MS) w.timer = setTimeout(expire, Math.max(0, timeoutMs), w);
      });
    },
    notify(id) {
      const entry = waiters.get(id);
      if (!entry) {
        if (early.size > 10_000) early.clear();
        early.set(id, Date.now());
        return false;
      }
      waiters.delete(id);
      if (Array.isArray(entry)) for (const w of entry) w.settle('notified');
      else entry.settle('notified');
      return true;
    },
  };
}
