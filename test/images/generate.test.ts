import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { jobSeed, type GenerateContext } from '../../src/images/generate.js';
import { imageServiceOver } from '../helpers/image-service.js';
import { FalCallError, type FalGateway, type FalJobStatus, type FalResult } from '../../src/fal/gateway.js';
import { mapFalError } from '../../src/fal/upstream-errors.js';
import { createDatabase, type Database } from '../../src/db/index.js';
import { createLedger, type Ledger } from '../../src/metering/ledger.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { parseMarkup } from '../../src/metering/money.js';
import { createServedModelRegistry } from '../../src/models/prices.js';
import { modelCatalog } from '../../src/models/registry.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import type { Media } from '../../src/images/media.js';
import { ApiError } from '../../src/errors.js';

/**
 * The use case alone: a scripted fal gateway (no HTTP, no emulator) and the
 * real ledger on a SQLite file, so every billing decision is seen in the rows
 * it writes. The protocol itself is tested against the emulator elsewhere.
 */

type Script = {
  submit?: (input: Record<string, unknown>, n: number) => Promise<{ falRequestId: string; strayIds: string[] }>;
  wait?: (id: string, signal: AbortSignal | undefined) => Promise<void>;
  result?: (id: string) => Promise<FalResult>;
  cancel?: (id: string) => Promise<'cancellation_requested' | 'already_completed' | 'not_found' | 'failed'>;
  status?: (id: string) => Promise<FalJobStatus>;
};

function fakeFal(script: Script): FalGateway & { submitted: Array<Record<string, unknown>>; cancelled: string[] } {
  const submitted: Array<Record<string, unknown>> = [];
  const cancelled: string[] = [];
  const image = (id: string, k: number) => ({ url: `https://v3.fal.media/files/x/${id}-${k}.png`, width: 512, height: 512, content_type: 'image/png' });
  const ok = (id: string, n: number): FalResult => ({ falRequestId: id, output: { images: Array.from({ length: n }, (_, k) => image(id, k)), seed: 7 }, billableUnits: null });
  return {
    submitted,
    cancelled,
    stats: { statusCalls: 0, streamCalls: 0, streamsOpen: 0, webhookWakeups: 0 },
    callerError: mapFalError,
    async submit(_endpoint, input) {
      submitted.push(input);
      return script.submit ? script.submit(input, submitted.length) : { falRequestId: `fal-${submitted.length}`, strayIds: [] };
    },
    async waitForCompletion(_e, id, o) {
      // As the gateway does: a wait under a signal already aborted ends at once.
      if (o?.signal?.aborted) throw new FalCallError('aborted', { phase: 'status', kind: 'aborted' });
      if (script.wait) await script.wait(id, o?.signal);
    },
    async result(_e, id) {
      if (script.result) return script.result(id);
      const n = submitted[Number(id.split('-')[1]) - 1]?.num_images;
      return ok(id, typeof n === 'number' ? n : 1);
    },
    async cancel(_e, id) {
      cancelled.push(id);
      return script.cancel ? script.cancel(id) : 'cancellation_requested';
    },
    async status(_e, id) {
      return script.status ? script.status(id) : { status: 'COMPLETED' };
    },
    async upload() {
      throw new Error('not used');
    },
    async listRequests() {
      throw new Error('not used');
    },
    async ping() {
      return true;
    },
  };
}

const media: Media = {
  clientUrl: (_r, u) => u,
  b64Item: async () => ({ b64_json: 'aGVsbG8=' }),
  proxyTarget: () => null,
};

const registry = createServedModelRegistry({ catalog: modelCatalog, prices: {} });

/** What better-sqlite3 throws when the disk is full: storage unavailable (src/db/errors.ts). */
function diskFull(): Error {
  return Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
}

async function setup(t: { after(fn: () => Promise<void>): void }, script: Script, requestTimeoutMs = 60_000) {
  const dir = await mkdtemp(join(tmpdir(), 'gw-generate-'));
  const database: Database = await createDatabase({ dataDir: dir, logger: pino({ level: 'silent' }) });
  t.after(async () => {
    await database.close();
    await rm(dir, { recursive: true, force: true });
  });
  const ledger: Ledger = createLedger(database);
  const key = await createKeysStore(database).ensureStatic('sk-generate-unit-0001');
  const fal = fakeFal(script);
  const images = imageServiceOver({ fal, ledger, media, markup: parseMarkup('1'), requestTimeoutMs, logger: pino({ level: 'silent' }) });
  let n = 0;
  const ctx = (over: Partial<GenerateContext> = {}): GenerateContext => ({ requestId: `req_unit_${++n}`, keyId: key.id, publicBaseUrl: 'http://gw', ...over });
  return { fal, ledger, images, ctx };
}

const canonical = (body: Record<string, unknown>) => normalizeRequest(registry, { model: 'alibaba/z-image-turbo', prompt: 'a cat', size: '512x512', ...body });

describe('createImageService with a scripted fal', () => {
  it('one job: submitted, collected, settled; the outcome carries the charge and fal ids', async (t) => {
    const s = await setup(t, {});
    const c = s.ctx();
    const out = await s.images.generate(canonical({}), c);
    assert.equal(out.body.data.length, 1);
    assert.deepEqual(out.falRequestIds, ['fal-1']);
    assert.equal(out.body.meta.usage.cost_usd, out.charge.usd);
    assert.equal(s.fal.submitted[0]!.sync_mode, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.status, 'settled');
    assert.deepEqual(row?.jobs.map((j) => j.status), ['completed']);
  });

  it('n above the per-job maximum: several jobs with derived seeds, one settlement', async (t) => {
    const s = await setup(t, {});
    const req = canonical({ n: 6, seed: 100 });
    const perJob = req.model.maxImagesPerJob;
    const c = s.ctx();
    const out = await s.images.generate(req, c);
    assert.equal(out.body.data.length, 6);
    assert.ok(s.fal.submitted.length > 1);
    assert.deepEqual(s.fal.submitted.map((i) => i.seed), s.fal.submitted.map((_, i) => jobSeed(100, i, perJob)));
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.jobs.length, s.fal.submitted.length);
  });

  it('a submit fal refuses: released as failed, a 4xx/5xx the caller may retry', async (t) => {
    const s = await setup(t, { submit: async () => Promise.reject(new FalCallError('refused', { phase: 'submit', kind: 'http', status: 503 })) });
    const c = s.ctx();
    const err = await s.images.generate(canonical({}), c).then(() => assert.fail('expected an error'), (e: unknown) => e);
    assert.ok(err instanceof ApiError);
    assert.notEqual(err.shouldRetry, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.status, 'failed');
    assert.equal(row?.errorCode, 'submit_503');
  });

  it('a submit whose answer was lost: no retry invited, closed uncharged, the job’s row left for the lost-submit search', async (t) => {
    const s = await setup(t, { submit: async () => Promise.reject(new FalCallError('reset', { phase: 'submit', kind: 'network', ambiguous: true })) });
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.shouldRetry, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.deepEqual([row?.status, row?.chargeMicros, row?.jobs.map((j) => [j.status, j.falRequestId])], ['failed', 0n, [['submitting', null]]]);
  });

  it('a submit answered 500 naming an id: that id is recorded for reconciliation to ask about', async (t) => {
    const s = await setup(t, { submit: async () => Promise.reject(new FalCallError('500', { phase: 'submit', kind: 'http', status: 500, ambiguous: true, falRequestId: 'fal-maybe' })) });
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.shouldRetry, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.deepEqual(row?.jobs.map((j) => [j.status, j.falRequestId]), [['submitted', 'fal-maybe']]);
  });

  it('the job failed on its input (result 422, fal’s status says it failed): closed at what fal billed, the caller not charged, the field named', async (t) => {
    const s = await setup(t, {
      status: async () => ({ status: 'COMPLETED', failed: { errorType: 'validation_error' } }),
      result: async () =>
        Promise.reject(new FalCallError('422', { phase: 'result', kind: 'http', status: 422, billableUnits: '0.5', body: { detail: [{ loc: ['body', 'prompt'], msg: 'too long' }] } })),
    });
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.status, 400);
    assert.equal(err.param, 'prompt');
    assert.equal(err.shouldRetry, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.status, 'failed');
    assert.equal(row?.chargeMicros, 0n);
    assert.deepEqual(row?.jobs.map((j) => [j.status, j.unitsFal, j.errorCode]), [['failed', '0.5', 'validation_error']]);
    assert.ok(row!.jobs[0]!.upstreamCostMicros > 0n, 'fal billed the failure: upstream cost');
    assert.equal(row?.upstreamCostMicros, row!.jobs[0]!.upstreamCostMicros);
  });

  it('a result fetch failing 404 while fal’s status says the job completed fine: left open, never closed on a guess', async (t) => {
    const s = await setup(t, { result: async () => Promise.reject(new FalCallError('404', { phase: 'result', kind: 'http', status: 404 })) });
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.shouldRetry, false);
    const row = await s.ledger.getRequest(c.requestId);
    assert.deepEqual([row?.status, row?.jobs.map((j) => j.status)], ['failed', ['submitted']]);
  });

  it('the deadline: the wait is cut, the job cancelled and confirmed, the request released', async (t) => {
    const s = await setup(
      t,
      {
        wait: (_id, signal) =>
          new Promise((_r, reject) => signal?.addEventListener('abort', () => reject(new FalCallError('aborted', { phase: 'status', kind: 'aborted' })), { once: true })),
        status: async () => ({ status: 'COMPLETED', failed: { errorType: 'client_cancelled' } }),
        result: async () => Promise.reject(new FalCallError('cancelled', { phase: 'result', kind: 'http', status: 400, billableUnits: '0' })),
      },
      50,
    );
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.status, 504);
    assert.deepEqual(s.fal.cancelled, ['fal-1']);
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.status, 'released');
    assert.equal(row?.errorCode, 'deadline');
    assert.deepEqual(row?.jobs.map((j) => j.status), ['cancelled']);
  });

  it('the caller leaving (its side aborts the request controller) cancels the job; fal had completed it, so it is billed', async (t) => {
    const controller = new AbortController();
    const s = await setup(t, {
      wait: (_id, signal) => {
        queueMicrotask(() => controller.abort(new Error('caller went away')));
        return new Promise((_r, reject) => signal?.addEventListener('abort', () => reject(new FalCallError('aborted', { phase: 'status', kind: 'aborted' })), { once: true }));
      },
      cancel: async () => 'already_completed',
    });
    const c = s.ctx({ controller });
    await s.images.generate(canonical({}), c);
    const row = await s.ledger.getRequest(c.requestId);
    assert.equal(row?.status, 'settled', 'fal completed it before the cancel: it bills, so we bill it');
  });

  it('the ledger failing after fal made the job: 503 metering_unavailable, and no retry invited (it would start another billable job)', async (t) => {
    const s = await setup(t, {});
    s.ledger.settleJobs = async () => Promise.reject(diskFull());
    const err = (await s.images.generate(canonical({}), s.ctx()).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.status, 503);
    assert.equal(err.code, 'metering_unavailable');
    assert.equal(err.shouldRetry, false);
  });

  it('the ledger down when the images are ready: 503 without retry, and the request is closed uncharged once the ledger is back', async (t) => {
    const s = await setup(t, {});
    s.ledger.settleJobs = async () => Promise.reject(diskFull());
    const release = s.ledger.release.bind(s.ledger);
    let releases = 0;
    s.ledger.release = async (input) => (++releases === 1 ? Promise.reject(diskFull()) : release(input));
    const c = s.ctx();
    const err = (await s.images.generate(canonical({}), c).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.code, 'metering_unavailable');
    assert.equal(err.shouldRetry, false);
    for (let i = 0; i < 600 && (await s.ledger.getRequest(c.requestId))?.status !== 'failed'; i++) await new Promise((r) => setTimeout(r, 50));
    const row = await s.ledger.getRequest(c.requestId);
    assert.deepEqual([row?.status, row?.chargeMicros, row?.jobs.map((j) => j.status)], ['failed', 0n, ['completed']], 'answered 503: never charged, fal’s cost recorded');
    assert.ok(row!.upstreamCostMicros > 0n);
    assert.equal(releases, 2, 'retried after the first failure');
  });

  it('a ledger write failing in one job of a fan-out stops the others, and the answer waits for all of them', async (t) => {
    let waits = 0;
    let ended = 0;
    const s = await setup(t, {
      wait: (_id, signal) =>
        new Promise((_r, reject) => {
          waits++;
          signal?.addEventListener('abort', () => {
            ended++;
            reject(new FalCallError('aborted', { phase: 'status', kind: 'aborted' }));
          }, { once: true });
        }),
      submit: async (_input, n) => ({ falRequestId: `fal-${n}`, strayIds: n === 1 ? ['stray-1'] : [] }),
    });
    s.ledger.recordStrays = async () => Promise.reject(diskFull());
    const err = (await s.images.generate(canonical({ n: 6 }), s.ctx()).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.code, 'metering_unavailable');
    assert.equal(err.shouldRetry, false);
    assert.equal(ended, waits, 'every sibling that waited was stopped before the answer');
    assert.equal(s.fal.cancelled.length, s.fal.submitted.length - 1, 'every other job was cancelled at fal');
  });

  it('the ledger refusing the reservation (not unavailable): our 500, no retry invited, nothing submitted', async (t) => {
    const s = await setup(t, {});
    s.ledger.reserve = async () => Promise.reject(Object.assign(new Error('invalid byte sequence for encoding "UTF8": 0x00'), { code: '22021' }));
    const err = (await s.images.generate(canonical({}), s.ctx()).catch((e: unknown) => e)) as ApiError;
    assert.deepEqual([err.status, err.code, err.retryAfterS, err.shouldRetry], [500, 'internal_error', undefined, false]);
    assert.equal(s.fal.submitted.length, 0);
  });

  it('the ledger refusing a write after fal made the job: our 500, no retry invited', async (t) => {
    const s = await setup(t, {});
    s.ledger.settleJobs = async () => Promise.reject(Object.assign(new Error('UNIQUE constraint failed: requests.id'), { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' }));
    const err = (await s.images.generate(canonical({}), s.ctx()).catch((e: unknown) => e)) as ApiError;
    assert.deepEqual([err.status, err.code, err.shouldRetry], [500, 'internal_error', false]);
  });

  it('the ledger unavailable: 503 metering_unavailable, nothing submitted', async (t) => {
    const s = await setup(t, {});
    s.ledger.reserve = async () => Promise.reject(diskFull());
    const err = (await s.images.generate(canonical({}), s.ctx()).catch((e: unknown) => e)) as ApiError;
    assert.equal(err.status, 503);
    assert.equal(err.code, 'metering_unavailable');
    assert.equal(s.fal.submitted.length, 0);
  });
});
