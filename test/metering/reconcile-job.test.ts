import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { until } from '../helpers/service-process.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { parseMarkup, parseUsd } from '../../src/metering/money.js';
import { createLateWord, LATE_WORD_WATCH_MS } from '../../src/metering/late-word.js';
import { createReconciler } from '../../src/metering/reconcile.js';
import { requestRow } from '../helpers/requests.js';

/**
 * Every job reaches a final state: the give-up paths of reconciliation
 * (src/metering/reconcile-job.ts) through the real service, the real
 * @fal-ai/client and the emulator's faults. The service runs with a short
 * deadline and a give-up deadline of a few seconds (JOB_GIVE_UP_MS). A
 * round before the deadline runs on a reconciler whose clock is held at the
 * job's first second (so a slow machine cannot move it past the deadline);
 * the give-up round is the service's own, once the deadline has passed.
 */

const MODEL = 'alibaba/z-image-turbo';
const GIVE_UP_MS = 3_000;

describe('reconciliation gives up on jobs fal never resolves', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ REQUEST_TIMEOUT_MS: '1000', LEASE_RENEW_MS: '200', LEASE_EXPIRY_MS: '1000', JOB_GIVE_UP_MS: String(GIVE_UP_MS), RECONCILE_INTERVAL_MS: '0' });
  });
  after(async () => {
    await t.close();
  });

  const post = (tag: string) =>
    request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: MODEL, prompt: `${tag} a quiet harbour`, image_size: 'square' });
  const falJob = (tag: string) => t.emulator.jobs().find((j) => String(j.input.prompt).includes(tag))!;
  const round = () => t.service.reconciler.run({ olderThanMs: 0 });
  /** A round as if run within the job's first second: before its give-up deadline, whatever the machine's speed. */
  const earlyRound = async (requestId: string) => {
    const created = Date.parse((await requestRow(t.service, requestId))!.jobs[0]!.createdAt);
    const s = t.service;
    return createReconciler({ ledger: s.ledger, fal: s.fal, registry: s.registry, markup: parseMarkup('1'), logger: s.logger, giveUpAfterMs: GIVE_UP_MS, now: () => created + 1_000 }).run();
  };
  /** Waits until the request's job is past the give-up deadline. */
  const pastDeadline = async (requestId: string) => {
    const created = Date.parse((await requestRow(t.service, requestId))!.jobs[0]!.createdAt);
    await new Promise((r) => setTimeout(r, Math.max(0, created + GIVE_UP_MS + 50 - Date.now())));
  };
  // What the keys hold: TEST_KEY has no budget, so its holds are its open requests' rows (docs/LEDGER-COST.md), as the key views sum them.
  const keyReserved = async () => (await t.service.keys.list()).reduce((s, k) => s + k.reservedMicros, 0n);

  it('a cancel fal ignores on a job that runs forever: cancelled again each round, then given up lost at its estimate, which is what fal bills when it ends', async () => {
    t.emulator.armFault([
      { kind: 'never_finish', prompt_contains: 'forever-ignored' },
      { kind: 'cancel_refused', mode: 'ignored', prompt_contains: 'forever-ignored', times: 100 },
    ]);
    const res = await post('forever-ignored');
    assert.equal(res.status, 504, JSON.stringify(res.body));
    const id = res.headers['x-request-id'] as string;
    assert.equal((await requestRow(t.service, id))?.jobs[0]?.status, 'submitted', 'fal may still run it: open');

    const cancelsBefore = t.emulator.stats().cancel ?? 0;
    const early = await earlyRound(id);
    assert.ok(!early.jobsClosed.includes(jobIdFor(id, 0)));
    assert.ok((t.emulator.stats().cancel ?? 0) > cancelsBefore, 'nobody will receive its images: fal is asked to cancel it');
    assert.equal((await requestRow(t.service, id))?.jobs[0]?.status, 'submitted');

    await pastDeadline(id);
    const late = await round();
    assert.ok(late.jobsClosed.includes(jobIdFor(id, 0)), JSON.stringify(late));
    const row = (await requestRow(t.service, id))!;
    const job = row.jobs[0]!;
    assert.equal(job.status, 'lost');
    assert.equal(job.errorCode, 'gave_up');
    assert.equal(job.falLastWord, 'IN_PROGRESS', 'fal’s last word is kept');
    assert.equal(job.costEstimated, true, 'fal reported no cost: the estimate, marked as one');
    assert.ok(job.upstreamCostMicros > 0n);
    assert.equal(row.chargeMicros, 0n, 'answered 504: never charged');
    assert.equal(await keyReserved(), 0n, 'no hold is left');
    const unrecovered = await t.service.reports.unrecovered({ model: MODEL });
    assert.ok(unrecovered.estimatedMicros >= job.upstreamCostMicros, 'the usage report shows it as an estimate');

    // fal's side ends it at last: what it bills is what the estimate said.
    t.emulator.finishJob(falJob('forever-ignored').request_id);
    const billed = t.emulator.billing().find((b) => b.request_id === job.falRequestId)!;
    assert.equal(job.upstreamCostMicros, parseUsd(billed.usd));
  });

  it('a cancel fal ignores on a job that completes later: its real cost is recorded, nobody charged', async () => {
    t.emulator.armFault([
      { kind: 'never_finish', prompt_contains: 'late-ignored' },
      { kind: 'cancel_refused', mode: 'ignored', prompt_contains: 'late-ignored', times: 100 },
    ]);
    const res = await post('late-ignored');
    assert.equal(res.status, 504);
    const id = res.headers['x-request-id'] as string;
    t.emulator.finishJob(falJob('late-ignored').request_id);
    const report = await round();
    assert.ok(report.jobsClosed.includes(jobIdFor(id, 0)));
    const row = (await requestRow(t.service, id))!;
    const billed = t.emulator.billing().find((b) => b.request_id === row.jobs[0]!.falRequestId)!;
    assert.equal(row.jobs[0]!.status, 'completed');
    assert.equal(row.jobs[0]!.costEstimated, false);
    assert.equal(row.upstreamCostMicros, parseUsd(billed.usd), 'upstream cost equals what fal billed');
    assert.equal(row.chargeMicros, 0n);
  });

  it('a job that never finishes, its caller gone: the request holds its budget until the give-up, then is released with the job lost', async () => {
    t.emulator.armFault({ kind: 'never_finish', prompt_contains: 'forever-gone' });
    const controller = new AbortController();
    const answer = fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'x-request-id': 'req-forever-gone' },
      body: JSON.stringify({ model: MODEL, prompt: 'forever-gone a quiet harbour', image_size: 'square' }),
      signal: controller.signal,
    }).catch(() => undefined);
    await until(async () => falJob('forever-gone')?.status === 'IN_PROGRESS', 'the job to run');
    controller.abort();
    await answer;
    // The runner cancels (fal only signals a running job), cannot confirm it, and leaves the request open: no answer was written.
    const id = (await requestRow(t.service, 'req-forever-gone'))!.id;
    await until(async () => !t.service.images.inFlight(id), 'the request to be let go');
    const open = (await requestRow(t.service, 'req-forever-gone'))!;
    assert.equal(open.status, 'reserved', 'held while fal may still complete it for the caller');
    assert.ok((await keyReserved()) > 0n);

    const early = await earlyRound('req-forever-gone');
    assert.ok(early.running.includes(id));
    assert.equal((await requestRow(t.service, 'req-forever-gone'))?.status, 'reserved');
    await pastDeadline('req-forever-gone');
    const late = await round();
    assert.deepEqual(late.abandoned, [id]);
    const row = (await requestRow(t.service, 'req-forever-gone'))!;
    assert.equal(row.status, 'failed');
    assert.equal(row.errorCode, 'gave_up');
    assert.equal(row.chargeMicros, 0n);
    assert.equal(row.jobs[0]!.status, 'lost');
    assert.equal(row.jobs[0]!.falLastWord, 'IN_PROGRESS');
    assert.equal(await keyReserved(), 0n, 'the hold is released');
    t.emulator.finishJob(falJob('forever-gone').request_id);
  });

  it('a job whose result keeps failing 5xx after it ran, its request open: unresolved each round, then given up with fal’s last word and the hold released', async () => {
    const model = t.service.registry.lookup(MODEL)!;
    const requestId = 'req-result-5xx';
    const keyId = (await t.service.keys.create({ name: 'give-up', budgetMicros: null })).record.id;
    // A request whose process died after the submit answered (lease-less: taken by age).
    const ledger = createLedger(t.service.database);
    assert.deepEqual(await ledger.reserve({ requestId, keyId, model: MODEL, endpoint: model.endpoint, maxChargeMicros: 50_000n, jobs: 1, estimates: [4_000n] }), { ok: true });
    t.emulator.armFault({ phase: 'result', status: 500, prompt_contains: 'result-5xx', times: 1000 });
    const { falRequestId } = await t.service.fal.submit(model.endpoint, { prompt: 'result-5xx a quiet harbour', image_size: 'square' });
    await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId });
    await t.service.fal.waitForCompletion(model.endpoint, falRequestId);

    const early = await earlyRound(requestId);
    assert.ok(early.unresolved.includes(requestId), JSON.stringify(early));
    assert.equal((await requestRow(t.service, requestId))?.status, 'reserved');
    await pastDeadline(requestId);
    const late = await round();
    assert.deepEqual(late.abandoned, [requestId]);
    const row = (await requestRow(t.service, requestId))!;
    assert.equal(row.status, 'failed');
    assert.equal(row.jobs[0]!.status, 'lost');
    assert.equal(row.jobs[0]!.falLastWord, 'result 500');
    assert.equal(row.jobs[0]!.costEstimated, true);
    assert.equal(row.jobs[0]!.upstreamCostMicros, 4_000n, 'the estimate written at reservation');
    const key = await t.service.database.db.selectFrom('api_keys').select('reserved_micros').where('id', '=', keyId).executeTakeFirstOrThrow();
    assert.equal(BigInt(key.reserved_micros), 0n);

    // fal's result reads again: the next round records what fal billed instead of the estimate, and charges nobody.
    const billed = t.emulator.billing().find((b) => b.request_id === falRequestId)!;
    assert.notEqual(parseUsd(billed.usd), 4_000n, 'fal billed other than the estimate');
    t.emulator.clearFaults();
    const later = await round();
    assert.deepEqual(later.lateCompleted, [jobIdFor(requestId, 0)]);
    const corrected = (await requestRow(t.service, requestId))!;
    assert.equal(corrected.jobs[0]!.status, 'completed');
    assert.equal(corrected.jobs[0]!.costEstimated, false);
    assert.equal(corrected.jobs[0]!.upstreamCostMicros, parseUsd(billed.usd), 'the job costs what fal billed');
    assert.equal(corrected.upstreamCostMicros, parseUsd(billed.usd), 'and so does its request');
    assert.deepEqual([corrected.status, corrected.chargeMicros], ['failed', 0n], 'the request stays closed, uncharged');
    assert.deepEqual((await round()).lateCompleted, [], 'recorded once');
  });

  it('asks fal again about lost jobs a page per round, and not about those given up longer ago than the watch', async () => {
    const model = t.service.registry.lookup(MODEL)!;
    const s = t.service;
    const keyId = (await s.keys.create({ name: 'late-pages', budgetMicros: null })).record.id;
    const ledger = createLedger(s.database);
    const ids = ['req-late-a', 'req-late-b', 'req-late-c'];
    for (const requestId of ids) {
      assert.deepEqual(await ledger.reserve({ requestId, keyId, model: MODEL, endpoint: model.endpoint, maxChargeMicros: 50_000n, jobs: 1, estimates: [4_000n] }), { ok: true });
      const { falRequestId } = await s.fal.submit(model.endpoint, { prompt: `${requestId} a quiet harbour`, image_size: 'square' });
      await ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId });
      await s.fal.waitForCompletion(model.endpoint, falRequestId);
      await ledger.closeJob({ jobId: jobIdFor(requestId, 0), status: 'lost', upstreamCostMicros: 4_000n, costEstimated: true, errorCode: 'gave_up' });
      await ledger.release({ requestId, status: 'failed', errorCode: 'gave_up' });
    }
    const lateWord = (perRound: number, now = Date.now) => createLateWord({ ledger: s.ledger, fal: s.fal, registry: s.registry, markup: parseMarkup('1'), logger: s.logger, now, perRound });
    const dayLater = () => Date.now() + LATE_WORD_WATCH_MS + 60_000;
    assert.deepEqual(await lateWord(5, dayLater).run(), [], 'given up longer ago than the watch: not asked about');
    // Other tests' lost jobs are in the list too: each round looks at two, and goes on where the last stopped.
    const paged = lateWord(2);
    const seen: string[] = [];
    for (let r = 0; r < 10 && !ids.every((id) => seen.includes(jobIdFor(id, 0))); r++) {
      const page = await paged.run();
      assert.ok(page.length <= 2, JSON.stringify(page));
      seen.push(...page);
    }
    assert.deepEqual(seen.filter((j) => ids.some((id) => j === jobIdFor(id, 0))).sort(), ids.map((id) => jobIdFor(id, 0)).sort());
    for (const requestId of ids) assert.equal((await requestRow(s, requestId))!.jobs[0]!.costEstimated, false);
  });
});
