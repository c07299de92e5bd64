import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestService, TEST_KEY, OTHER_KEY, type TestService } from '../helpers/service.js';
import { memoryIdempotencyStore } from '../helpers/fakes.js';
import { waitFor } from '../emulator/helpers.js';
import { errorResponse } from '../../src/errors.js';
import { bodyHash, withIdempotency } from '../../src/http/idempotency.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import { sha256Hex, staticKeyId } from '../../src/metering/auth.js';
import { createIdempotencyStore } from '../../src/metering/idempotency-store.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { inputHash } from '../../src/metering/lost-submits.js';
import { parseMarkup, parseUsd } from '../../src/metering/money.js';
import { maxCharge } from '../../src/metering/pricing.js';
import { encodePricing, settleCompleted } from '../../src/metering/settlement.js';

const body = { model: 'alibaba/z-image-turbo', prompt: 'idempotent lighthouse', image_size: 'square', seed: 3 };

describe('Idempotency-Key', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { latencyMs: 300 });
  });
  after(async () => {
    await t.close();
  });

  const post = (key: string, idem: string, b: unknown) =>
    request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${key}`).set('Idempotency-Key', idem).send(b as object);

  it('a repeat with an equal body returns the stored response, with no new job and no new charge', async () => {
    const first = await post(TEST_KEY, 'idem-1', body);
    assert.equal(first.status, 200);
    const jobsBefore = t.emulator.jobs().length;
    // Same JSON, different key order: equal after parsing.
    const reordered = { seed: 3, image_size: 'square', prompt: body.prompt, model: body.model };
    const second = await post(TEST_KEY, 'idem-1', reordered);
    assert.equal(second.status, 200);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(second.body, first.body);
    assert.equal(t.emulator.jobs().length, jobsBefore);
    const img = await fetch(second.body.data[0].url);
    assert.equal(img.status, 200, 'the stored URL is still valid');
    const row = await t.service.ledger.getRequest(first.headers['x-request-id'] as string);
    assert.equal(row?.status, 'settled');
    const settled = await t.service.database.db.selectFrom('requests').select('id').where('idempotency_key', '=', 'idem-1').execute();
    assert.equal(settled.length, 1, 'one charge');
  });

  it('a different body under the same key is a 422', async () => {
    const res = await post(TEST_KEY, 'idem-1', { ...body, seed: 4 });
    assert.equal(res.status, 422);
    assert.equal(res.body.error.code, 'idempotency_key_reused');
    assert.equal(res.body.error.param, 'Idempotency-Key');
  });

  it('a repeat while the first is running waits for it and gets the same answer', async () => {
    const jobsBefore = t.emulator.jobs().length;
    const [a, b] = await Promise.all([post(TEST_KEY, 'idem-concurrent', body), post(TEST_KEY, 'idem-concurrent', body)]);
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    assert.deepEqual(a.body, b.body);
    assert.equal(t.emulator.jobs().length, jobsBefore + 1, 'one fal job');
  });

  it('keys are scoped per API key: another key with the same Idempotency-Key does new work', async () => {
    const jobsBefore = t.emulator.jobs().length;
    const res = await post(OTHER_KEY, 'idem-1', body);
    assert.equal(res.status, 200);
    assert.equal(res.headers['idempotent-replayed'], undefined);
    assert.equal(t.emulator.jobs().length, jobsBefore + 1);
  });

  it('validation failures are not stored: a corrected request may reuse the key', async () => {
    const bad = await post(TEST_KEY, 'idem-fix', { ...body, image_size: 'huge' });
    assert.equal(bad.status, 400);
    const good = await post(TEST_KEY, 'idem-fix', body);
    assert.equal(good.status, 200);
    assert.equal(good.headers['idempotent-replayed'], undefined);
  });

  it('errors after submission are stored: the repeat gets the same error and starts no job', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', status: 422, detail: [{ loc: ['body', 'prompt'], msg: 'refused', type: 'value_error' }], prompt_contains: 'doomed' });
    const b = { ...body, prompt: 'doomed idea' };
    const first = await post(TEST_KEY, 'idem-err', b);
    assert.equal(first.status, 400);
    const jobsBefore = t.emulator.jobs().length;
    const second = await post(TEST_KEY, 'idem-err', b);
    assert.equal(second.status, 400);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(second.body, first.body);
    assert.equal(t.emulator.jobs().length, jobsBefore);
  });

  it('rejects a malformed Idempotency-Key', async () => {
    const res = await post(TEST_KEY, 'x'.repeat(300), body);
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'Idempotency-Key');
  });
});

/**
 * The key's claim outlives the process that made it: a SIGKILL (the
 * integration test test/http/idempotency-crash.test.ts does it for real)
 * leaves the claim and the request's ledger rows under a lease nobody
 * renews. Here those rows are written as that process would have left them,
 * under a lease that has no row (a dead process's), and a retry with the key
 * is sent to a live service.
 */
describe('Idempotency-Key whose request no live process will answer', () => {
  let t: TestService;
  const DEAD_LEASE = 'lease-of-a-killed-process';
  const keyId = staticKeyId(sha256Hex(TEST_KEY));
  const markup = parseMarkup('1');
  before(async () => {
    t = await startTestService({}, { latencyMs: 300 });
    await t.service.keys.ensureStatic(TEST_KEY);
  });
  after(async () => {
    await t.close();
  });

  const post = (idem: string, b: unknown) => request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).set('Idempotency-Key', idem).send(b as object);
  const bodyFor = (prompt: string) => ({ model: 'alibaba/z-image-turbo', prompt, image_size: 'square', seed: 11 });

  /** The claim a killed process left, and (unless `reserved: false`) its request reserved and its job submitted to fal (or recorded under `falRequestId`). */
  async function leftByKilledProcess(body: Record<string, unknown>, idemKey: string, opts: { reserved?: boolean; falRequestId?: string } = {}) {
    const db = t.service.database;
    const requestId = `killed-${randomUUID()}`;
    await createIdempotencyStore(db).begin({ keyId, idemKey, bodyHash: bodyHash(body), requestId, ttlS: 3600, leaseId: DEAD_LEASE });
    if (opts.reserved === false) return { requestId };
    const canonical = normalizeRequest(t.service.registry, body);
    const input = { ...canonical.falInput, num_images: canonical.numImages, sync_mode: false };
    const ledger = createLedger(db, { leaseId: DEAD_LEASE });
    const pricing = { promptExpansion: canonical.promptExpansion, markup };
    const reserved = await ledger.reserve({ requestId, keyId, model: canonical.model.id, endpoint: canonical.model.endpoint, maxChargeMicros: maxCharge(canonical, markup), pricing: encodePricing(pricing), idempotencyKey: idemKey, jobs: 1, inputHashes: [inputHash(input)] });
    assert.equal(reserved.ok, true);
    const falRequestId = opts.falRequestId ?? (await t.service.fal.submit(canonical.model.endpoint, input)).falRequestId;
    await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId });
    return { requestId, falRequestId, ledger, canonical, pricing };
  }

  it('nothing reserved: the retry takes the key over and does the work once', async () => {
    const body = bodyFor('claimed then killed');
    await leftByKilledProcess(body, 'idem-not-started', { reserved: false });
    const jobsBefore = t.emulator.jobs().length;
    const res = await post('idem-not-started', body);
    assert.equal(res.status, 200);
    assert.equal(res.headers['idempotent-replayed'], undefined, 'fresh work, not a replay');
    assert.equal(t.emulator.jobs().length, jobsBefore + 1);
    const again = await post('idem-not-started', body);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.deepEqual(again.body, res.body);
    assert.equal(t.emulator.jobs().length, jobsBefore + 1);
  });

  it('fal completed the job: the retry reconciles the request at once and answers with its images, charged once', async () => {
    const body = bodyFor('completed while nobody watched');
    const { requestId, falRequestId } = await leftByKilledProcess(body, 'idem-completed');
    const jobsBefore = t.emulator.jobs().length;
    const res = await post('idem-completed', body);
    assert.equal(res.status, 200);
    assert.equal(res.headers['idempotent-replayed'], 'true');
    assert.deepEqual(res.body.meta.fal_request_ids, [falRequestId]);
    assert.equal((await fetch(res.body.data[0].url)).status, 200, 'the image URL works');
    const row = await t.service.ledger.getRequest(requestId);
    assert.equal(row?.status, 'settled');
    assert.ok(row.chargeMicros > 0n);
    assert.equal(parseUsd(res.headers['x-usage-cost-usd'] as string), row.chargeMicros, 'the answer states the charge the ledger holds');
    assert.equal(res.body.meta.usage.cost_usd, res.headers['x-usage-cost-usd']);
    const again = await post('idem-completed', body);
    assert.deepEqual(again.body, res.body, 'the answer is stored: a second retry gets the same');
    assert.equal(t.emulator.jobs().length, jobsBefore, 'no new fal job');
  });

  it('fal still works on the job: the retry waits for it, then answers with its images', async () => {
    t.emulator.armFault({ kind: 'latency', latency_ms: 2500, prompt_contains: 'slow after the crash' });
    const body = bodyFor('slow after the crash');
    const { falRequestId } = await leftByKilledProcess(body, 'idem-slow');
    assert.notEqual(t.emulator.jobs().find((j) => j.request_id === falRequestId)?.status, 'COMPLETED');
    const res = await post('idem-slow', body);
    assert.equal(res.status, 200);
    assert.equal(t.emulator.jobs().find((j) => j.request_id === falRequestId)?.status, 'COMPLETED');
    assert.deepEqual(res.body.meta.fal_request_ids, [falRequestId]);
  });

  it('fal failed the job: a final error that says nothing was charged, stored for every later retry', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', prompt_contains: 'fails after the crash' });
    const body = bodyFor('fails after the crash');
    const { requestId } = await leftByKilledProcess(body, 'idem-failed');
    const res = await post('idem-failed', body);
    assert.equal(res.status, 502);
    assert.equal(res.body.error.code, 'idempotent_request_failed');
    assert.match(res.body.error.message, /not charged/);
    assert.equal(res.headers['x-should-retry'], 'false');
    assert.equal(res.headers['idempotent-replayed'], 'true');
    const row = await t.service.ledger.getRequest(requestId);
    assert.equal(row?.status, 'failed');
    assert.equal(row.chargeMicros, 0n);
    const again = await post('idem-failed', body);
    assert.equal(again.status, 502);
    assert.deepEqual(again.body, res.body);
  });

  it('charged, but fal no longer has the job: a final error that states the charge and that a retry is not billed', async () => {
    const body = bodyFor('settled then purged at fal');
    const { requestId, ledger, canonical, pricing } = await leftByKilledProcess(body, 'idem-gone', { falRequestId: `purged-${randomUUID()}` });
    const row = await ledger!.getRequest(requestId);
    const settled = await settleCompleted(ledger!, canonical!.model, requestId, pricing!, [{ jobId: row!.jobs[0]!.id, falRequestId: row!.jobs[0]!.falRequestId!, images: [{ width: 1024, height: 1024 }], billableUnits: null }]);
    const res = await post('idem-gone', body);
    assert.equal(res.status, 502);
    assert.equal(res.body.error.code, 'idempotent_result_gone');
    assert.match(res.body.error.message, new RegExp(`charged \\$${settled.charge.usd.replace('.', '\\.')}`));
    assert.match(res.body.error.message, /not charged again/);
    assert.equal(res.headers['x-usage-cost-usd'], settled.charge.usd);
    assert.equal(res.headers['x-should-retry'], 'false');
    assert.deepEqual((await post('idem-gone', body)).body, res.body, 'stored');
    assert.equal((await t.service.ledger.getRequest(requestId))?.chargeMicros, settled.charge.micros, 'charged once');
  });

  it('the caller left while fal ran on past the cancel: no error is stored, and the retry gets the images it was charged for', async () => {
    // Its own service: this process reconciles its own leftovers (a request whose caller left with a job open) after 1 s.
    const own = await startTestService({ RECONCILE_AFTER_MS: '1000' }, { use: t.emulator });
    try {
      t.emulator.armFault([
        { kind: 'latency', latency_ms: 4000, prompt_contains: 'caller leaves' },
        { kind: 'cancel_refused', mode: 'ignored', prompt_contains: 'caller leaves' },
      ]);
      const body = bodyFor('caller leaves early');
      const gone = new AbortController();
      const first = fetch(`${own.url}/v1/images/generations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'idempotency-key': 'idem-left' },
        body: JSON.stringify(body),
        signal: gone.signal,
      }).catch(() => 'left');
      const job = await waitFor(() => t.emulator.jobs().find((j) => j.input.prompt === body.prompt), 10_000);
      gone.abort();
      assert.equal(await first, 'left');
      const db = own.service.database.db;
      // The cancel went unconfirmed (fal ran on), so the request was left open; its claim detached rather than answered.
      const claim = await waitFor(async () => {
        const c = await db.selectFrom('idempotency').selectAll().where('idem_key', '=', 'idem-left').executeTakeFirst();
        return c?.lease_id === null ? c : undefined;
      }, 10_000, 50);
      assert.equal(claim.state, 'running');
      const res = await request(own.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).set('Idempotency-Key', 'idem-left').send(body);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body.meta.fal_request_ids, [job.request_id]);
      const row = await db.selectFrom('requests').selectAll().where('idempotency_key', '=', 'idem-left').executeTakeFirstOrThrow();
      assert.equal(row.status, 'settled', 'fal completed the job after the caller left: charged');
      assert.equal(parseUsd(res.headers['x-usage-cost-usd'] as string), row.charge_micros);
    } finally {
      await own.close();
    }
  });
});

describe('withIdempotency while the claim runs on a live process', () => {
  it('waits, then answers 409 with retry-after; it never takes the key over', async () => {
    const store = memoryIdempotencyStore();
    const b = { prompt: 'x' };
    await store.begin({ keyId: 'k', idemKey: 'i', bodyHash: bodyHash(b), requestId: 'first', ttlS: 60, leaseId: 'live' });
    let asked = 0;
    const err = await withIdempotency(
      { store, ttlS: 60, waitMs: 60, pollMs: 5, leaseId: 'mine' },
      { keyId: 'k', idemKey: 'i', requestId: 'second', body: b, recover: async () => (asked++, { state: 'in_progress' }) },
      async () => assert.fail('the work must not run twice'),
    ).then(() => assert.fail('expected a 409'), (e: unknown) => e);
    const out = errorResponse(err);
    assert.equal(out.status, 409);
    assert.equal(out.body.error.code, 'idempotency_key_in_progress');
    assert.equal(out.headers['retry-after'], '1');
    assert.ok(asked >= 2, 'the claim was looked up on every poll');
  });

  it('an answer that cannot be stored is still sent, and its claim stays open for the ledger to answer a repeat', async () => {
    const memory = memoryIdempotencyStore();
    const store = { ...memory, complete: async () => { throw new Error('database is locked'); } };
    const warnings: object[] = [];
    const b = { prompt: 'z' };
    const reply = await withIdempotency(
      { store, ttlS: 60, waitMs: 60, leaseId: 'mine', logger: { warn: (obj) => warnings.push(obj) } },
      { keyId: 'k', idemKey: 'i', requestId: 'r1', body: b },
      async (run) => {
        run.submitted = true;
        return { status: 200, headers: { 'x-charged-usd': '0.005' }, body: { data: [{ url: 'u' }] } };
      },
    );
    assert.equal(reply.status, 200);
    assert.deepEqual(reply.body, { data: [{ url: 'u' }] });
    assert.equal(warnings.length, 1);
    assert.equal((warnings[0] as { requestId: string }).requestId, 'r1');
    assert.deepEqual(await memory.begin({ keyId: 'k', idemKey: 'i', bodyHash: bodyHash(b), requestId: 'r2', ttlS: 60 }), { state: 'running', requestId: 'r1', leaseId: 'mine' });
  });

  it('an error after submission whose caller left is not stored: the claim is detached for the ledger to answer', async () => {
    const store = memoryIdempotencyStore();
    const b = { prompt: 'y' };
    await assert.rejects(
      withIdempotency({ store, ttlS: 60, waitMs: 60, leaseId: 'mine' }, { keyId: 'k', idemKey: 'i', requestId: 'r1', body: b, callerGone: () => true }, async (run) => {
        run.submitted = true;
        throw new Error('caller went away');
      }),
    );
    assert.deepEqual(await store.begin({ keyId: 'k', idemKey: 'i', bodyHash: bodyHash(b), requestId: 'r2', ttlS: 60 }), { state: 'running', requestId: 'r1', leaseId: null });
  });
});
