/**
 * Webhook delivery the way fal does it: POST `{request_id, gateway_request_id,
 * status, payload, error?}`, signed with ED25519 over
 * `request_id \n user_id \n timestamp \n sha256hex(body)` (signature as hex,
 * timestamp in unix seconds), public key published as a JWKS (OKP/Ed25519,
 * `x` base64url), and retried with backoff when the receiver fails.
 * Every attempt is signed afresh, with its own timestamp, because receivers
 * reject stale timestamps.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';

export interface WebhookRetryOptions {
  /** Total attempts including the first; fal makes 1 + 10. */
  attempts: number;
  /** Delay before the 2nd attempt; doubles each time. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Per-attempt timeout (fal: 15 s). */
  timeoutMs: number;
}

export const DEFAULT_WEBHOOK_RETRY: WebhookRetryOptions = {
  attempts: 11,
  baseDelayMs: 1000,
  maxDelayMs: 20 * 60 * 1000,
  timeoutMs: 15000,
};

export interface Jwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  kid: string;
  use: 'sig';
  alg: 'EdDSA';
}

export interface WebhookSigner {
  readonly privateKeyPem: string;
  readonly jwks: { keys: Jwk[] };
  headers(requestId: string, userId: string, body: Buffer | string, nowS?: number): Record<string, string>;
}

export function createSigner(privateKeyPem?: string): WebhookSigner {
  let privateKey: KeyObject;
  if (privateKeyPem) {
    privateKey = createPrivateKey(privateKeyPem);
  } else {
    privateKey = generateKeyPairSync('ed25519').privateKey;
  }
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const pub = createPublicKey(privateKey).export({ format: 'jwk' }) as { x?: string };
  const x = pub.x ?? '';
  const kid = createHash('sha256').update(x).digest('base64url').slice(0, 16);
  const jwks = { keys: [{ kty: 'OKP' as const, crv: 'Ed25519' as const, x, kid, use: 'sig' as const, alg: 'EdDSA' as const }] };
  return {
    privateKeyPem: pem,
    jwks,
    headers(requestId, userId, body, nowS = Math.floor(Date.now() / 1000)) {
      const timestamp = String(nowS);
      const digest = createHash('sha256').update(body).digest('hex');
      const message = Buffer.from(`${requestId}\n${userId}\n${timestamp}\n${digest}`, 'utf8');
      const signature = sign(null, message, privateKey).toString('hex');
      return {
        'x-fal-webhook-request-id': requestId,
        'x-fal-webhook-user-id': userId,
        'x-fal-webhook-timestamp': timestamp,
        'x-fal-webhook-signature': signature,
      };
    },
  };
}

export interface DeliveryAttempt {
  request_id: string;
  url: string;
  attempt: number;
  at: string;
  /** HTTP status, or absent when the request failed outright. */
  status?: number;
  error?: string;
  ok: boolean;
}

export interface WebhookSender {
  /** Starts delivery; `onSettled` reports the final outcome. */
  send(requestId: string, url: string, body: string, onSettled: (ok: boolean, attempts: number) => void, firstAttempt?: number): void;
  deliveries(): DeliveryAttempt[];
  pending(): number;
  clearLog(): void;
  cancelAll(): void;
}

export function createWebhookSender(opts: {
  signer: WebhookSigner;
  userId: string;
  retry: WebhookRetryOptions;
  onLog?: (entry: DeliveryAttempt) => void;
  maxLog?: number;
}): WebhookSender {
  const log: DeliveryAttempt[] = [];
  const timers = new Set<NodeJS.Timeout>();
  const controllers = new Set<AbortController>();
  const maxLog = opts.maxLog ?? 10000;
  // Bumped by cancelAll(): attempts from an older generation stop quietly.
  let generation = 0;
  let inflight = 0;

  const record = (e: DeliveryAttempt) => {
    log.push(e);
    if (log.length > maxLog) log.splice(0, log.length - maxLog);
    opts.onLog?.(e);
  };

  const attempt = async (
    gen: number,
    requestId: string,
    url: string,
    body: string,
    n: number,
    onSettled: (ok: boolean, attempts: number) => void,
  ) => {
    if (gen !== generation) return;
    const ctrl = new AbortController();
    controllers.add(ctrl);
    const timeout = setTimeout(() => ctrl.abort(), opts.retry.timeoutMs);
    timeout.unref();
    let ok = false;
    const entry: DeliveryAttempt = { request_id: requestId, url, attempt: n, at: new Date().toISOString(), ok: false };
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'fal-emulator-webhook/1',
          ...opts.signer.headers(requestId, opts.userId, body),
        },
        body,
        signal: ctrl.signal,
      });
      entry.status = res.status;
      ok = res.ok;
      // Drain so the connection can be reused.
      await res.arrayBuffer().catch(() => undefined);
    } catch (err) {
      entry.error = (err as Error).message;
    } finally {
      clearTimeout(timeout);
      controllers.delete(ctrl);
    }
    if (gen !== generation) return;
    entry.ok = ok;
    record(entry);
    if (ok || n >= opts.retry.attempts) {
      inflight -= 1;
      onSettled(ok, n);
      return;
    }
    const delay = Math.min(opts.retry.baseDelayMs * 2 ** (n - 1), opts.retry.maxDelayMs);
    const t = setTimeout(() => {
      timers.delete(t);
      void attempt(gen, requestId, url, body, n + 1, onSettled);
    }, delay);
    t.unref();
    timers.add(t);
  };

  return {
    send(requestId, url, body, onSettled, firstAttempt = 1) {
      inflight += 1;
      void attempt(generation, requestId, url, body, firstAttempt, onSettled);
    },
    deliveries: () => log.slice(),
    pending: () => inflight,
    clearLog() {
      log.length = 0;
    },
    cancelAll() {
      generation += 1;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const c of controllers) c.abort();
      controllers.clear();
      inflight = 0;
    },
  };
}
