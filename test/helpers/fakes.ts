/**
 * In-memory stand-ins for the app's dependencies, so `createApp` can be built
 * and driven through supertest with no emulator, database or Redis. Each fake
 * does the least its callers need and records what it was asked; a method no
 * unit test reaches throws, so a test that starts depending on it fails
 * loudly instead of passing on a made-up answer.
 */
import pino, { type Logger } from 'pino';
import { createApp, type AppDeps } from '../../src/app.js';
import type { Authenticate, Principal } from '../../src/http/auth.js';
import type { GenerateContext, GenerateOutcome, ImageService } from '../../src/images/generate.js';
import type { FalJobStatus } from '../../src/fal/types.js';
import type { CanonicalRequest } from '../../src/images/normalize.js';
import type { Media } from '../../src/images/media.js';
import type { KeysStore } from '../../src/metering/keys-store.js';
import type { Reports } from '../../src/metering/reports.js';
import type { BeginResult, IdempotencyStore } from '../../src/metering/idempotency-store.js';
import type { KeyRateLimiter } from '../../src/http/rate-limit.js';
import { createMetrics } from '../../src/metrics.js';
import { createModelRegistry, defaultModels } from '../../src/models/registry.js';
import { parseMarkup } from '../../src/metering/money.js';

export const USER_KEY = 'sk-unit-user-0123456789';
export const ADMIN_KEY = 'sk-unit-admin-0123456789';
export const USER: Principal = { keyId: 'key-user', role: 'user', rpmLimit: null };
export const ADMIN: Principal = { keyId: 'key-admin', role: 'admin', rpmLimit: null };

function notInFake(what: string): never {
  throw new Error(`${what} is not implemented by the unit-test fake`);
}

/** A model every registry built from the catalog serves, with a field schema that takes `seed`. */
export const MODEL = 'alibaba/z-image-turbo';

/** A success answer as the use case returns it: one URL image, one micro-dollar-exact charge. */
export function cannedOutcome(overrides: Partial<GenerateOutcome> = {}): GenerateOutcome {
  return {
    body: {
      created: 1_700_000_000,
      data: [{ url: 'https://images.example.test/v1/files/one.png' }],
      output_format: 'png',
      size: '1024x1024',
      meta: {
        usage: { credits_used: 10_000, tokens_used: 10_000, cost_usd: '0.005000' },
        seed: 42,
        images: [{ width: 1024, height: 1024, content_type: 'image/png', has_nsfw_concept: false }],
        request_id: 'req_00000000000000000000000000000001',
        fal_request_id: 'fal-req-1',
        fal_request_ids: ['fal-req-1'],
      },
    },
    charge: { micros: 5_000n, usd: '0.005000', credits: 10_000 },
    falRequestIds: ['fal-req-1'],
    ...overrides,
  };
}

/** A state fal reported for one of the request's jobs, as the use case tells it (`GenerateContext.onJobStatus`). */
export interface FakeJobStatus {
  jobIndex: number;
  jobCount: number;
  status: FalJobStatus;
}

/** What the fake use case does with one call: answer, fail, or report job states first. */
export type FakeBehaviour =
  | { outcome: GenerateOutcome; progress?: FakeJobStatus[] }
  | { error: unknown; progress?: FakeJobStatus[] };

export interface FakeImageService extends ImageService {
  calls: Array<{ req: CanonicalRequest; ctx: GenerateContext }>;
}

/** The use case, answering every call with `behaviour` (a function of the call, or a fixed one). */
export function fakeImageService(behaviour: FakeBehaviour | ((req: CanonicalRequest) => FakeBehaviour) = { outcome: cannedOutcome() }): FakeImageService {
  const calls: FakeImageService['calls'] = [];
  return {
    calls,
    async generate(req, ctx) {
      calls.push({ req, ctx });
      const b = typeof behaviour === 'function' ? behaviour(req) : behaviour;
      for (const p of b.progress ?? []) ctx.onJobStatus?.(p.jobIndex, p.jobCount, p.status);
      ctx.onSubmitted?.();
      if ('error' in b) throw b.error;
      return b.outcome;
    },
    inFlight: () => false,
  };
}

/** Keys by token; records every token it was asked about. */
export function fakeAuthenticate(keys: Record<string, Principal> = { [USER_KEY]: USER, [ADMIN_KEY]: ADMIN }): Authenticate & { asked: string[] } {
  const asked: string[] = [];
  const authenticate = async (token: string) => {
    asked.push(token);
    return keys[token] ?? null;
  };
  return Object.assign(authenticate, { asked });
}

export function fakeMedia(): Media {
  return {
    clientUrl: (_result, falUrl) => falUrl,
    b64Item: () => notInFake('Media.b64Item'),
    proxyTarget: () => null,
  };
}

export function fakeKeysStore(): KeysStore {
  return {
    create: () => notInFake('KeysStore.create'),
    findByKey: () => notInFake('KeysStore.findByKey'),
    findByHash: () => notInFake('KeysStore.findByHash'),
    list: async () => [],
    get: async () => null,
    update: async () => null,
    disable: async () => null,
    ensureStatic: () => notInFake('KeysStore.ensureStatic'),
  };
}

export function fakeReports(): Reports {
  return {
    usage: () => notInFake('Reports.usage'),
    exportRows: () => notInFake('Reports.exportRows'),
    unitsDisagreements: () => notInFake('Reports.unitsDisagreements'),
    unrecovered: () => notInFake('Reports.unrecovered'),
  };
}

/**
 * `Idempotency-Key` records in a Map, with the store's contract: the first
 * `begin` claims the key, a repeat sees it running, done, or (other body) a
 * mismatch. No expiry: a unit test lives for milliseconds.
 */
export function memoryIdempotencyStore(): IdempotencyStore {
  type Row = { bodyHash: string; requestId: string; leaseId: string | null; done?: { statusCode: number; response: unknown } };
  const rows = new Map<string, Row>();
  const id = (keyId: string, idemKey: string) => `${keyId}\u0000${idemKey}`;
  const running = (keyId: string, idemKey: string, requestId: string | undefined) => {
    const row = rows.get(id(keyId, idemKey));
    return !row || row.done || (requestId !== undefined && row.requestId !== requestId) ? undefined : row;
  };
  return {
    async begin({ keyId, idemKey, bodyHash, requestId, leaseId }): Promise<BeginResult> {
      const row = rows.get(id(keyId, idemKey));
      if (!row) {
        rows.set(id(keyId, idemKey), { bodyHash, requestId, leaseId: leaseId ?? null });
        return { state: 'new' };
      }
      if (row.bodyHash !== bodyHash) return { state: 'mismatch' };
      if (row.done) return { state: 'done', statusCode: row.done.statusCode, response: row.done.response, requestId: row.requestId };
      return { state: 'running', requestId: row.requestId, leaseId: row.leaseId };
    },
    async complete({ keyId, idemKey, statusCode, response, requestId }) {
      const row = running(keyId, idemKey, requestId);
      if (!row) return false;
      row.done = { statusCode, response };
      return true;
    },
    async abandon({ keyId, idemKey, requestId }) {
      return running(keyId, idemKey, requestId) ? rows.delete(id(keyId, idemKey)) : false;
    },
    async detach({ keyId, idemKey, requestId }) {
      const row = running(keyId, idemKey, requestId);
      if (row) row.leaseId = null;
      return row !== undefined;
    },
    async takeOver({ keyId, idemKey, fromRequestId, requestId, leaseId }) {
      const row = running(keyId, idemKey, fromRequestId);
      if (row) Object.assign(row, { requestId, leaseId: leaseId ?? null });
      return row !== undefined;
    },
    purgeExpired: async () => 0,
  };
}

/** The unit tests leave limits at 0 (unlimited), so the limiter is never asked. */
export function fakeRateLimiter(): KeyRateLimiter {
  return {
    store: 'memory',
    stats: { failOpen: 0, failClosed: 0, refused: 0 },
    take: () => notInFake('KeyRateLimiter.take'),
    check: async () => true,
    ready: async () => undefined,
    close: async () => undefined,
  };
}

/** A pino logger whose lines land in `lines` (parsed), for tests that check what was logged. */
export function memoryLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}

/** Everything `createApp` needs, from fakes; override any part. */
export function fakeAppDeps(overrides: Partial<AppDeps> = {}): AppDeps {
  return {
    logger: memoryLogger().logger,
    registry: createModelRegistry(defaultModels),
    images: fakeImageService(),
    media: fakeMedia(),
    authenticate: fakeAuthenticate(),
    keys: fakeKeysStore(),
    reports: fakeReports(),
    readiness: [],
    maxBodyBytes: 64 * 1024,
    publicBaseUrl: 'https://gateway.example.test',
    idempotency: { store: memoryIdempotencyStore(), ttlS: 3600, waitMs: 1_000, pollMs: 5 },
    metrics: createMetrics({ defaultMetrics: false }),
    markup: parseMarkup('1'),
    maxInFlight: 100,
    corsOrigins: [],
    rateLimit: { limiter: fakeRateLimiter(), defaultRpm: 0 },
    ...overrides,
  };
}

/** A fresh app over fakes (nothing listens: supertest serves it per request). */
export function fakeApp(overrides: Partial<AppDeps> = {}) {
  return createApp(fakeAppDeps(overrides));
}
