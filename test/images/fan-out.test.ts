import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';
import { jobSeed } from '../../src/images/generate.js';
import { parseUsd } from '../../src/metering/money.js';

/**
 * n=9 with the second job failing at fal (422): the request is answered with
 * the error and never charged; the siblings are cancelled through fal (a
 * running one may still finish and bill); once every job is final the
 * ledger holds, job for job, what fal billed.
 */
async function oneFailingJob(t: TestService): Promise<void> {
  t.emulator.armFault([
    { kind: 'fail_after_start', status: 422, detail: [{ loc: ['body', 'prompt'], msg: 'refused', type: 'value_error' }], prompt_contains: 'mixed fate', times: 1 },
  ]);
  const res = await request(t.url)
    .post('/v1/images/generations')
    .set('Authorization', `Bearer ${TEST_KEY}`)
    .send({ model: 'alibaba/z-image-turbo', image_size: 'square', prompt: 'mixed fate', n: 9, seed: 2000 });
  assert.equal(res.status, 400, JSON.stringify(res.body));
  assert.equal(res.headers['x-should-retry'], 'false');
  const id = res.headers['x-request-id'] as string;
  const answered = await t.service.ledger.getRequest(id);
  assert.deepEqual([answered?.status, answered?.chargeMicros], ['failed', 0n], 'answered with an error: never charged');
  assert.equal(answered?.jobs.length, 3, 'every sibling was submitted: none cut in flight');
  assert.ok(answered?.jobs.some((j) => j.status === 'failed'));

  const mine = () => t.emulator.jobs().filter((j) => j.input.prompt === 'mixed fate');
  for (let i = 0; i < 1500 && mine().some((j) => j.status !== 'COMPLETED'); i++) await new Promise((r) => setTimeout(r, 20));
  await t.service.reconciler.run({ olderThanMs: 0 });
  const row = (await t.service.ledger.getRequest(id))!;
  const billed = t.emulator.billing().filter((b) => row.jobs.some((j) => j.falRequestId === b.request_id));
  for (const job of row.jobs) {
    const bill = billed.find((b) => b.request_id === job.falRequestId);
    assert.equal(job.upstreamCostMicros, bill ? parseUsd(bill.usd) : 0n, `job ${job.id} (${job.status}) costs what fal billed`);
    assert.ok(job.status !== 'submitted' && job.status !== 'submitting', `job ${job.id} is final`);
  }
  assert.equal(row.upstreamCostMicros, billed.reduce((s, b) => s + parseUsd(b.usd), 0n));
  assert.deepEqual([row.status, row.chargeMicros], ['failed', 0n]);
}

/** n above the model's per-job maximum (4) fans out into parallel fal jobs. */
describe('n beyond one fal job', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { latencyMs: 100 });
  });
  after(async () => {
    await t.close();
  });
  const post = (body: Record<string, unknown>) =>
    request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: 'alibaba/z-image-turbo', image_size: 'square', ...body });

  it('n=10 becomes jobs of 4, 4 and 2 with derived seeds, answered as one response in order, each job metered', async () => {
    const res = await post({ prompt: 'ten kites', n: 10, seed: 1000, enable_prompt_expansion: true });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assertMatchesSchema('images', res.body);
    assert.equal(res.body.data.length, 10);
    const ids = res.body.meta.fal_request_ids as string[];
    assert.equal(ids.length, 3);
    const jobs = ids.map((id) => t.emulator.job(id)!);
    assert.deepEqual(jobs.map((j) => j.input.num_images), [4, 4, 2]);
    assert.deepEqual(jobs.map((j) => j.input.seed), [1000, jobSeed(1000, 1, 4), jobSeed(1000, 2, 4)]);
    assert.deepEqual(jobs.map((j) => j.input.seed), [1000, 1004, 1008]);
    assert.equal(res.body.meta.seed, 1000);
    // Distinct images, in job order.
    const bytes = await Promise.all(res.body.data.map(async (d: { url: string }) => Buffer.from(await (await fetch(d.url)).arrayBuffer())));
    assert.equal(new Set(bytes.map((b) => b.toString('base64'))).size, 10);
    const meta = await sharp(bytes[9]!).metadata();
    assert.deepEqual([meta.width, meta.height], [512, 512]);
    // 10 images × 1 MP × $0.005 + 3 jobs × $0.0025 expansion (fal runs, and bills, it per job).
    assert.equal(res.body.meta.usage.cost_usd, '0.057500');
    const row = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
    assert.equal(row?.status, 'settled');
    assert.equal(row?.jobs.length, 3);
    assert.equal(row?.chargeMicros, parseUsd('0.0575'));
    const billed = t.emulator.billing().filter((b) => ids.includes(b.request_id));
    assert.equal(billed.reduce((s, b) => s + parseUsd(b.usd), 0n), row?.upstreamCostMicros);
  });

  it('one failing job fails the request uncharged, cancels the others through fal, and the ledger holds what fal billed', async () => {
    await oneFailingJob(t);
  });

  it('one failing job fails the request and cancels the others (emulator kinder: unbilled_failures, cancel_stops_running)', async () => {
    const kind = await startTestService({}, { latencyMs: 100, kinder: ['unbilled_failures', 'cancel_stops_running'] });
    try {
      await oneFailingJob(kind);
    } finally {
      await kind.close();
    }
  });

  it('without a seed, jobs still get distinct derived seeds', async () => {
    const res = await post({ prompt: 'random fan', n: 6 });
    assert.equal(res.status, 200);
    const seeds = (res.body.meta.fal_request_ids as string[]).map((id) => t.emulator.job(id)!.input.seed as number);
    assert.equal(seeds.length, 2);
    assert.equal(seeds[1], jobSeed(seeds[0]!, 1, 4));
    assert.equal(res.body.meta.seed, seeds[0]);
  });

  it('n=11 is refused naming n and the model limit', async () => {
    const res = await post({ prompt: 'too many', n: 11 });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'n');
    assert.match(res.body.error.message, /at most 10/);
  });

  it('num_images (aimlapi) stays one job’s worth', async () => {
    const res = await post({ prompt: 'x', num_images: 5 });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'num_images');
  });
});
