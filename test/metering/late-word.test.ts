import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { startTestService, type TestService } from '../helpers/service.js';
import { createLedger, jobIdFor } from '../../src/metering/ledger.js';
import { parseMarkup, parseUsd } from '../../src/metering/money.js';
import { createLateWord } from '../../src/metering/late-word.js';
import { createReconciler } from '../../src/metering/reconcile.js';

/**
 * fal's late word on jobs given up as lost (src/metering/late-word.ts),
 * through the real ledger, gateway and emulator: a job fal completes after
 * its give-up costs what fal billed, and nobody is ever charged for it.
 * Requests are reserved here, as the service would, with two jobs: one
 * given up as lost while fal in fact completed it, the other completed.
 * The service's own rounds are off (RECONCILE_INTERVAL_MS 0 after start-up).
 * On both databases.
 */

const MODEL = 'alibaba/z-image-turbo';

describeEachDialect('late word on jobs given up as lost', ({ fresh }) => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ ...(await serviceEnv(await fresh())), RECONCILE_INTERVAL_MS: '0' });
  });
  after(async () => {
    await t.close();
  });

  const lateWord = () => createLateWord({ ledger: t.service.ledger, fal: t.service.fal, registry: t.service.registry, markup: parseMarkup('1'), logger: t.service.logger, now: Date.now });
  const round = () => createReconciler({ ledger: t.service.ledger, fal: t.service.fal, registry: t.service.registry, markup: parseMarkup('1'), logger: t.service.logger }).run({ olderThanMs: 0 });

  /** An open request of a key of its own whose caller left: job 0 given up as lost at a 4,000-micro estimate though fal completed it, job 1 completed at fal. */
  async function openRequestWithLostJob(tag: string): Promise<{ requestId: string; keyId: string; lost: string; falLost: string }> {
    const s = t.service;
    const model = s.registry.lookup(MODEL)!;
    const keyId = (await s.keys.create({ name: tag, budgetMicros: null })).record.id;
    const ledger = createLedger(s.database);
    const requestId = `req-${tag}`;
    assert.deepEqual(await ledger.reserve({ requestId, keyId, model: MODEL, endpoint: model.endpoint, maxChargeMicros: 100_000n, jobs: 2, estimates: [4_000n, 4_000n] }), { ok: true });
    const fal: string[] = [];
    for (const i of [0, 1]) {
      const { falRequestId } = await s.fal.submit(model.endpoint, { prompt: `${tag} ${i} a quiet harbour`, image_size: 'square' });
      await ledger.recordSubmit({ jobId: jobIdFor(requestId, i), falRequestId });
      await s.fal.waitForCompletion(model.endpoint, falRequestId);
      fal.push(falRequestId);
    }
    const lost = jobIdFor(requestId, 0);
    await ledger.closeJob({ jobId: lost, status: 'lost', upstreamCostMicros: 4_000n, costEstimated: true, errorCode: 'gave_up' });
    return { requestId, keyId, lost, falLost: fal[0]! };
  }

  it('leaves a lost job alone while its request still holds, so the round that settles the request never charges for it', async () => {
    const { requestId, lost } = await openRequestWithLostJob('late-open');
    assert.deepEqual(await lateWord().run(), [], 'its request still holds: the lost job is not asked about');
    assert.equal((await t.service.ledger.getRequest(requestId))?.jobs[0]?.status, 'lost');

    // The round settles the request on its completed job, then (the request closed) records fal's word on the lost one.
    const report = await round();
    assert.ok(report.settled.includes(requestId), JSON.stringify(report));
    assert.deepEqual(report.lateCompleted, [lost]);
    const settled = (await t.service.ledger.getRequest(requestId))!;
    assert.deepEqual([settled.status, settled.images, settled.jobs.map((j) => j.status)], ['settled', 1, ['completed', 'completed']], 'charged for the completed job only, never for the lost one');
    assert.deepEqual(await lateWord().run(), [], 'recorded once');
  });

  it('a lost job of a settled request completed later stays unrecovered cost, at what fal billed', async () => {
    const { requestId, keyId, lost, falLost } = await openRequestWithLostJob('late-settled');
    assert.deepEqual(await t.service.reports.unrecovered({ keyId }), { totalMicros: 4_000n, estimatedMicros: 4_000n, jobs: 1, byModel: [{ model: MODEL, micros: 4_000n, estimatedMicros: 4_000n, jobs: 1 }] }, 'the lost job, at its estimate');
    const report = await round();
    assert.ok(report.settled.includes(requestId));
    assert.deepEqual(report.lateCompleted, [lost]);
    const billed = parseUsd(t.emulator.billing().find((b) => b.request_id === falLost)!.usd);
    assert.notEqual(billed, 4_000n);
    const row = (await t.service.ledger.getRequest(requestId))!;
    assert.deepEqual([row.jobs[0]!.status, row.jobs[0]!.upstreamCostMicros, row.jobs[0]!.costEstimated, row.images], ['completed', billed, false, 1]);
    const after = await t.service.reports.unrecovered({ keyId });
    assert.deepEqual([after.totalMicros, after.estimatedMicros, after.jobs], [billed, 0n, 1], 'nobody paid for it: still unrecovered, now at fal’s cost');
  });
});

it('stops asking once the round’s budget for fal is spent, and the next round starts from the job it was asking about', async () => {
  const lost = ['r1/0', 'r2/0', 'r3/0'].map((id, i) => ({ id, requestId: id.split('/')[0]!, falRequestId: `fal-${id}`, endpoint: 'e', completedAt: `2026-01-01T00:0${i}:00.000Z`, upstreamCostMicros: 4_000n }));
  const asked: Array<{ after?: { at: string; id: string } | undefined }> = [];
  const ledger = {
    listLostJobs: async (o: { after?: { at: string; id: string } }) => {
      asked.push({ after: o.after });
      return lost.filter((j) => !o.after || j.id > o.after.id);
    },
    getRequest: async () => ({ status: 'failed', model: MODEL, endpoint: 'e', pricing: null }),
    completeLostJob: async () => assert.fail('nothing completed'),
  };
  // fal answers r1 at once and never answers r2 until the call is cut.
  const fal = {
    status: (_e: string, id: string, o: { signal: AbortSignal }) =>
      id === 'fal-r2/0' ? new Promise((_, reject) => o.signal.addEventListener('abort', () => reject(new Error('cut')), { once: true })) : Promise.resolve({ status: 'IN_PROGRESS' }),
  };
  const warnings: string[] = [];
  const logger = { warn: (_o: unknown, msg: string) => warnings.push(msg) };
  const word = createLateWord({ ledger, fal, registry: { forEndpoint: () => ({}) }, markup: parseMarkup('1'), logger, now: Date.now, budgetMs: 200 } as unknown as Parameters<typeof createLateWord>[0]);
  // The budget's timer does not hold the event loop open (AbortSignal.timeout); a server would.
  const open = setInterval(() => {}, 1_000);
  try {
    assert.deepEqual(await word.run(), [], 'r2 hangs until the budget cuts it; r3 is not asked about');
    assert.deepEqual(await word.run(), []);
  } finally {
    clearInterval(open);
  }
  assert.deepEqual(asked.map((a) => a.after?.id), [undefined, 'r1/0'], 'the second round starts after r1, from r2');
  assert.equal(warnings.length, 0, 'a look cut by the budget is not an error to report');
});
