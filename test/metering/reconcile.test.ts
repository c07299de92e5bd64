import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { createFalGateway, type FalGateway } from '../../src/fal/gateway.js';
import { createReconciler, type ReconcileReport } from '../../src/metering/reconcile.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { inputHash } from '../../src/metering/lost-submits.js';
import { parseMarkup, parseUsd } from '../../src/metering/money.js';
import { waitFor } from '../emulator/helpers.js';

/**
 * Reconciliation of submits whose answer was lost, through the real service,
 * emulator, gateway and ledger: fal's request listing finds the job (it is
 * then settled from what fal says) or shows nothing (the job is released at
 * $0). Rounds run with a clock moved past each submit's window; the
 * service's own reconciler never touches these young rows.
 */

const MODEL = 'alibaba/z-image-turbo';

async function until(fn: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 30_000;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
const LATER_MS = 10 * 60_000;

describe('reconcile: lost submits', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  /** A reconciler whose clock is `aheadMs` in the future: windows of rows written now are closed. */
  const reconcile = (opts: { aheadMs?: number; fal?: FalGateway; giveUpAfterMs?: number } = {}): Promise<ReconcileReport> =>
    createReconciler({
      ledger: t.service.ledger,
      fal: opts.fal ?? t.service.fal,
      registry: t.service.registry,
      markup: parseMarkup('1'),
      logger: t.service.logger,
      now: () => Date.now() + (opts.aheadMs ?? LATER_MS),
      ...(opts.giveUpAfterMs !== undefined ? { giveUpAfterMs: opts.giveUpAfterMs } : {}),
    }).run();

  const post = (tag: string) =>
    request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: MODEL, prompt: `${tag} a quiet harbour`, image_size: 'square' });

  /** A request reserved as the service does, whose one job's submit never answered (no answer written: the caller is gone). */
  async function openRequestWithLostSubmit(input: Record<string, unknown>): Promise<{ requestId: string; jobId: string }> {
    const requestId = `req-lost-${Math.random().toString(36).slice(2)}`;
    const model = t.service.registry.lookup(MODEL)!;
    const reserved = await t.service.ledger.reserve({ requestId, keyId: await keyId(), model: MODEL, endpoint: model.endpoint, maxChargeMicros: 1_000_000n, jobs: 1, inputHashes: [inputHash(input)] });
    assert.deepEqual(reserved, { ok: true });
    return { requestId, jobId: jobIdFor(requestId, 0) };
  }

  async function keyId(): Promise<string> {
    const row = await t.service.database.db.selectFrom('api_keys').select('id').executeTakeFirstOrThrow();
    return row.id;
  }

  it('the listing shows nothing once the window is closed: the job is released, refused at $0', async () => {
    t.emulator.armFault({ phase: 'submit', kind: 'reset', prompt_contains: 'lost-none', times: 10 });
    const res = await post('lost-none');
    assert.equal(res.status, 502);
    assert.equal(res.headers['x-should-retry'], 'false');
    const id = res.headers['x-request-id'] as string;
    assert.equal((await t.service.ledger.getRequest(id))?.jobs[0]?.status, 'submitting', 'the submit’s outcome is unknown');
    assert.equal(t.emulator.jobs().filter((j) => String(j.input.prompt).includes('lost-none')).length, 0, 'fal made no job');

    const pending = await reconcile({ aheadMs: 0 });
    assert.ok(!pending.lostAbsent.includes(jobIdFor(id, 0)), 'not released while a submit may still be on its way');
    assert.equal((await t.service.ledger.getRequest(id))?.jobs[0]?.status, 'submitting');

    const report = await reconcile();
    assert.ok(report.lostAbsent.includes(jobIdFor(id, 0)));
    const row = await t.service.ledger.getRequest(id);
    assert.equal(row?.jobs[0]?.status, 'refused');
    assert.equal(row?.jobs[0]?.errorCode, 'not_listed_at_fal');
    assert.equal(row?.jobs[0]?.upstreamCostMicros, 0n);
    assert.equal(row?.upstreamCostMicros, 0n);
    assert.equal(row?.chargeMicros, 0n);
  });

  it('an open request (no answer written) whose lost submit fal made: found by its input, settled on fal’s bill', async () => {
    const model = t.service.registry.lookup(MODEL)!;
    const input = { prompt: 'lost-open a quiet harbour', image_size: 'square', num_images: 1, sync_mode: false };
    const { requestId, jobId } = await openRequestWithLostSubmit(input);
    // The submit reached fal; its answer never reached the ledger.
    const { falRequestId } = await t.service.fal.submit(model.endpoint, { ...input });
    await t.service.fal.waitForCompletion(model.endpoint, falRequestId);

    const report = await reconcile();
    assert.ok(report.lostFound.includes(jobId));
    assert.ok(report.settled.includes(requestId));
    const row = await t.service.ledger.getRequest(requestId);
    const billed = t.emulator.billing().find((b) => b.request_id === falRequestId)!;
    assert.equal(row?.jobs[0]?.falRequestId, falRequestId);
    assert.equal(row?.jobs[0]?.status, 'completed');
    assert.equal(row?.upstreamCostMicros, parseUsd(billed.usd), 'upstream cost equals what fal billed');
    assert.equal(row?.status, 'settled');
    assert.ok((row?.chargeMicros ?? 0n) > 0n, 'no answer was written: the images are the caller’s');
  });

  it('a listed request whose id the ledger already holds is not taken for a lost submit with the same input', async () => {
    const model = t.service.registry.lookup(MODEL)!;
    const input = { prompt: 'lost-twin a quiet harbour', image_size: 'square', num_images: 1, sync_mode: false };
    // The first request's submit answered: its job holds fal's id.
    const first = await openRequestWithLostSubmit(input);
    const { falRequestId } = await t.service.fal.submit(model.endpoint, { ...input });
    await t.service.ledger.recordSubmit({ jobId: first.jobId, falRequestId });
    // The second, same input, never reached fal.
    const second = await openRequestWithLostSubmit(input);

    const report = await reconcile();
    assert.ok(report.lostAbsent.includes(second.jobId));
    assert.ok(!report.lostFound.includes(second.jobId));
    assert.equal((await t.service.ledger.getRequest(second.requestId))?.jobs[0]?.status, 'refused');
    assert.equal((await t.service.ledger.getRequest(first.requestId))?.jobs[0]?.falRequestId, falRequestId);
  });

  it('a submit still being resent is not lost: the process’s own round leaves a request it is answering alone, even when fal lists a job of the same input', async () => {
    // The first attempt makes a job and is refused 503 (fal named it: a stray); the resend waits 3 s, then makes the job.
    t.emulator.armFault([
      { phase: 'submit', status: 503, commit: true, prompt_contains: 'resent', times: 1 },
      { phase: 'submit', kind: 'delay', delay_ms: 3_000, prompt_contains: 'resent', times: 1 },
    ]);
    // supertest sends on then(): started now, awaited below.
    const answer = post('resent').then((r) => r);
    await until(() => t.emulator.jobs().some((j) => String(j.input.prompt).includes('resent')), 'the refused attempt’s job');
    const round = await t.service.reconciler.run({ olderThanMs: 0 });
    assert.deepEqual(round.lostFound, [], 'the job of the refused attempt is not taken for the request’s own');
    const res = await answer;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const row = (await t.service.ledger.getRequest(res.headers['x-request-id'] as string))!;
    const jobs = t.emulator.jobs().filter((j) => String(j.input.prompt).includes('resent'));
    assert.equal(jobs.length, 2);
    assert.equal(row.jobs.find((j) => j.kind === 'job')?.falRequestId, res.body.meta.fal_request_id ?? row.jobs.find((j) => j.kind === 'job')?.falRequestId);
    assert.equal(row.jobs.filter((j) => j.kind === 'stray').length, 1, 'the refused attempt’s job is a stray');
    assert.equal(row.chargeMicros, parseUsd(res.headers['x-usage-cost-usd'] as string), 'charged once, as answered');
  });

  it('a listing that fails is tried again next round; the job stays open until it answers', async () => {
    const input = { prompt: 'lost-flaky a quiet harbour', image_size: 'square', num_images: 1, sync_mode: false };
    const { requestId, jobId } = await openRequestWithLostSubmit(input);
    const down = createFalGateway({
      credentials: 'fal-test-key',
      baseUrl: t.emulator.url,
      retry: { listing: { attempts: 2, baseDelayMs: 1, maxDelayMs: 1 } },
      fetchImpl: async (input, init) => {
        const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
        return url.includes('/api.fal.ai/') ? new Response('{"detail":"unavailable"}', { status: 503, headers: { 'content-type': 'application/json' } }) : fetch(input, init);
      },
    });
    const failed = await reconcile({ fal: down });
    assert.ok(!failed.lostAbsent.includes(jobId) && !failed.lostFound.includes(jobId));
    const row = await t.service.ledger.getRequest(requestId);
    assert.equal(row?.jobs[0]?.status, 'submitting');
    assert.equal(row?.status, 'reserved', 'the hold is kept while fal cannot say');

    const next = await reconcile();
    assert.ok(next.lostAbsent.includes(jobId));
    assert.equal((await t.service.ledger.getRequest(requestId))?.jobs[0]?.status, 'refused');
  });
});

describe('reconcile: lost submits when fal stores no inputs (X-Fal-Store-IO: 0)', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ FAL_STORE_IO: 'false' });
  });
  after(async () => {
    await t.close();
  });

  it('the job cannot be matched: left open, then given up as lost after giveUpAfterMs', async () => {
    t.emulator.armFault({ phase: 'submit', kind: 'reset', commit: true, prompt_contains: 'lost-hidden' });
    const res = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: MODEL, prompt: 'lost-hidden a quiet harbour', image_size: 'square' });
    assert.equal(res.headers['x-should-retry'], 'false');
    const id = res.headers['x-request-id'] as string;
    const job = t.emulator.jobs().find((j) => String(j.input.prompt).includes('lost-hidden'));
    assert.ok(job, 'fal made the job');
    const run = (giveUpAfterMs: number) =>
      createReconciler({ ledger: t.service.ledger, fal: t.service.fal, registry: t.service.registry, markup: parseMarkup('1'), logger: t.service.logger, now: () => Date.now() + LATER_MS, giveUpAfterMs }).run();

    const kept = await run(24 * 3600_000);
    assert.ok(!kept.lostAbsent.includes(jobIdFor(id, 0)), 'an unreadable listing is no proof that fal made nothing');
    assert.equal((await t.service.ledger.getRequest(id))?.jobs[0]?.status, 'submitting');

    await run(LATER_MS / 2);
    const row = await t.service.ledger.getRequest(id);
    assert.equal(row?.jobs[0]?.status, 'lost');
    assert.equal(row?.jobs[0]?.errorCode, 'gave_up');
    assert.match(row?.jobs[0]?.falLastWord ?? '', /listing unmatchable/);
    // fal reported no cost for it: recorded at the job's estimate, marked as one, which is what fal billed for the job it made.
    assert.equal(row?.jobs[0]?.costEstimated, true);
    // fal bills the job when it completes, which need not have happened yet on a busy machine.
    const billed = await waitFor(() => t.emulator.billing().find((b) => b.request_id === job.request_id), 60_000);
    assert.equal(row?.jobs[0]?.upstreamCostMicros, parseUsd(billed.usd));
  });
});

describe('reconcile: leases', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService();
  });
  after(async () => {
    await t.close();
  });

  /** A reconciler of the process holding `ownLeaseId` (its ledger writes under that lease), its clock `aheadMs` in the future. */
  const reconcile = (ownLeaseId: string, aheadMs = 0): Promise<ReconcileReport> =>
    createReconciler({
      ledger: createLedger(t.service.database, { leaseId: ownLeaseId }),
      fal: t.service.fal,
      registry: t.service.registry,
      markup: parseMarkup('1'),
      logger: t.service.logger,
      now: () => Date.now() + aheadMs,
      leases: { store: createLeaseStore(t.service.database), ownLeaseId },
    }).run({ olderThanMs: 3_600_000 });

  /** A request of `leaseId`'s process whose one job fal does not know (reconciled, it is released). */
  async function openRequest(leaseId: string | undefined): Promise<string> {
    const requestId = `req-lease-${Math.random().toString(36).slice(2)}`;
    const model = t.service.registry.lookup(MODEL)!;
    const keyId = (await t.service.keys.create({ name: 'lease test', budgetMicros: null })).record.id;
    const ledger = createLedger(t.service.database, { leaseId });
    assert.deepEqual(await ledger.reserve({ requestId, keyId, model: MODEL, endpoint: model.endpoint, maxChargeMicros: 1_000n, jobs: 1 }), { ok: true });
    await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId: `unknown-${requestId}` });
    return requestId;
  }

  it('a live peer’s request waits for its lease to expire, then is settled at once; the own young request is left alone', async () => {
    const store = createLeaseStore(t.service.database);
    const peer = await store.acquire({ id: `peer-${Math.random()}`, host: 'elsewhere', pid: 1, expiryMs: 10_000 });
    const own = await store.acquire({ id: `own-${Math.random()}`, host: 'here', pid: 2, expiryMs: 3_600_000 });
    const peers = await openRequest(peer.id);
    const mine = await openRequest(own.id);

    const live = await reconcile(own.id);
    assert.equal(live.examined, 0, 'neither is touched: the peer is live, the own request young');
    assert.equal(live.nextLeaseExpiryMs, peer.expiresAtMs, 'the round says when to look again');
    assert.equal((await t.service.ledger.getRequest(peers))?.status, 'reserved');

    const expired = await reconcile(own.id, 10_001);
    assert.deepEqual(expired.released, [peers], 'fal knows no such job: released');
    assert.equal(expired.nextLeaseExpiryMs, undefined);
    assert.equal((await t.service.ledger.getRequest(peers))?.status, 'failed');
    assert.equal((await t.service.ledger.getRequest(mine))?.status, 'reserved');
  });

  it('a dead owner’s lost submit is settled once its lease expiry (and the clock skew) has passed, not a submit timeout after its row', async () => {
    const store = createLeaseStore(t.service.database);
    const dead = await store.acquire({ id: `dead-${Math.random()}`, host: 'elsewhere', pid: 1, expiryMs: 1_000 });
    const model = t.service.registry.lookup(MODEL)!;
    const keyId = (await t.service.keys.create({ name: 'lost window', budgetMicros: null })).record.id;
    const reserveLost = async (leaseId: string | undefined) => {
      const requestId = `req-window-${Math.random().toString(36).slice(2)}`;
      const input = { prompt: `${requestId} never sent`, image_size: 'square', num_images: 1, sync_mode: false };
      await createLedger(t.service.database, { leaseId }).reserve({ requestId, keyId, model: MODEL, endpoint: model.endpoint, maxChargeMicros: 1_000n, jobs: 1, inputHashes: [inputHash(input)] });
      return requestId;
    };
    // A lease whose row is gone gives no expiry: its requests are anyone's, but its submits' windows are the whole submit timeout.
    const gone = await store.acquire({ id: `gone-${Math.random()}`, host: 'elsewhere', pid: 2, expiryMs: 1_000 });
    const ofDead = await reserveLost(dead.id);
    const ofGone = await reserveLost(gone.id);
    await store.release(gone.id);
    // 10 s on: the dead lease ran out 9 s ago, more than the skew; the other submit could still be on its way (60 s).
    const report = await reconcile(`own-${Math.random()}`, 10_000);
    assert.ok(report.lostAbsent.includes(jobIdFor(ofDead, 0)), JSON.stringify(report));
    assert.equal((await t.service.ledger.getRequest(ofDead))?.status, 'failed', 'released: fal made no job');
    assert.ok(!report.lostAbsent.includes(jobIdFor(ofGone, 0)));
    assert.equal((await t.service.ledger.getRequest(ofGone))?.jobs[0]?.status, 'submitting');
    assert.ok(report.adopted.includes(ofGone), 'looked at: its owner is gone');
  });

  it('a request whose lease was released (a graceful stop) is anyone’s at once; a lease-less young one is not', async () => {
    const store = createLeaseStore(t.service.database);
    const gone = await store.acquire({ id: `gone-${Math.random()}`, host: 'elsewhere', pid: 1, expiryMs: 10_000 });
    const orphan = await openRequest(gone.id);
    const leaseless = await openRequest(undefined);
    await store.release(gone.id);
    const report = await reconcile(`own-${Math.random()}`);
    assert.deepEqual(report.released, [orphan]);
    assert.equal((await t.service.ledger.getRequest(leaseless))?.status, 'reserved');
  });
});
