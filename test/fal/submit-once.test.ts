import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { createFalClient } from '@fal-ai/client';
import { startEmulator, type Emulator, type FaultSpec } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError, type FalGateway } from '../../src/fal/gateway.js';
import { submitHeaders } from '../../src/fal/submit-once.js';
import { loadConfig } from '../../src/config.js';
import { createRedirectFetch } from '../../src/fal/redirect-fetch.js';

/**
 * One gateway submit against the emulator's faults, counting what reached
 * fal: submit calls and the jobs they made (src/fal/submit-once.ts). A submit
 * is sent again only when fal's answer proves it made no job.
 */
const ENDPOINT = 'fal-ai/z-image/turbo';

describe('a submit is sent once unless fal proves it made no job', () => {
  let emu: Emulator;
  let fal: FalGateway;
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 60_000, imageMode: 'cheap' });
    fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url });
  });
  after(async () => {
    await emu.close();
  });

  const jobsFor = (prompt: string) => emu.jobs().filter((j) => j.input.prompt === prompt);
  const submits = () => emu.stats().submit ?? 0;

  /** One gateway submit under `fault`: its outcome, and the submit calls fal received for it. */
  async function submitUnder(prompt: string, fault: Omit<FaultSpec, 'prompt_contains'>, signal?: AbortSignal) {
    emu.armFault({ ...fault, phase: 'submit', prompt_contains: prompt });
    const before = submits();
    const outcome: { ok?: { falRequestId: string; strayIds: string[] }; err?: FalCallError } = await fal.submit(ENDPOINT, { prompt, image_size: 'square' }, { signal }).then(
      (ok) => ({ ok }),
      (err: unknown) => ({ err: err as FalCallError }),
    );
    return { ...outcome, calls: submits() - before };
  }

  for (const commit of [false, true]) {
    it(`connection reset after sending (${commit ? 'the job was made' : 'no job'}): not sent again, reported as ambiguous`, async () => {
      const prompt = `reset commit=${commit}`;
      const r = await submitUnder(prompt, { kind: 'reset', commit, times: 5 });
      assert.equal(r.calls, 1, 'one submit reached fal');
      assert.equal(jobsFor(prompt).length, commit ? 1 : 0);
      assert.ok(r.err instanceof FalCallError, String(r.err));
      assert.equal(r.err.kind, 'network');
      assert.equal(r.err.ambiguous, true, 'fal may hold a job we never heard of');
    });
  }

  for (const status of [500, 502, 504]) {
    it(`${status} after fal made the job: not sent again, the job's id reported`, async () => {
      const prompt = `http ${status} commit`;
      const r = await submitUnder(prompt, { status, commit: true, times: 5 });
      assert.equal(r.calls, 1);
      const jobs = jobsFor(prompt);
      assert.equal(jobs.length, 1, 'one job, never two');
      assert.ok(r.err instanceof FalCallError);
      assert.equal(r.err.status, status);
      assert.equal(r.err.ambiguous, true);
      assert.equal(r.err.falRequestId, jobs[0]!.request_id, 'the id fal named on the ambiguous answer may be the job: reported as its id');
      assert.deepEqual(r.err.strayIds, [], 'no earlier attempt named another job');
    });
  }

  it('timeout: a submit that outlives its deadline is not sent again; the job fal makes late is the only one', async () => {
    const prompt = 'slow submit';
    const r = await submitUnder(prompt, { kind: 'delay', delay_ms: 1500 }, AbortSignal.timeout(200));
    assert.ok(r.err instanceof FalCallError);
    assert.equal(r.err.kind, 'aborted');
    assert.equal(r.err.ambiguous, true);
    // The emulator takes the submit once its delay is over.
    const deadline = Date.now() + 30_000;
    while (jobsFor(prompt).length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    assert.equal(jobsFor(prompt).length, 1);
    assert.equal(r.calls, 1);
  });

  it('503 refusal (fal made no job): sent again, one job; the refused attempt\'s id is reported', async () => {
    const prompt = '503 refused';
    const r = await submitUnder(prompt, { status: 503, retry_after: 0, times: 1 });
    assert.equal(r.calls, 2);
    const jobs = jobsFor(prompt);
    assert.equal(jobs.length, 1);
    assert.ok(r.ok, String(r.err));
    assert.equal(r.ok.falRequestId, jobs[0]!.request_id);
    assert.equal(r.ok.strayIds.length, 1, 'an id on a refusal is not proof of a job, but is kept in case');
    assert.notEqual(r.ok.strayIds[0], jobs[0]!.request_id);
  });

  it('429 refusal: sent again after its retry-after; one job', async () => {
    const prompt = '429 refused';
    const r = await submitUnder(prompt, { status: 429, retry_after: 0, times: 2 });
    assert.equal(r.calls, 3);
    assert.equal(jobsFor(prompt).length, 1);
    assert.ok(r.ok, String(r.err));
  });

  it('refusals past the retry budget: fal\'s answer, not ambiguous, no job', async () => {
    const prompt = '503 always';
    const r = await submitUnder(prompt, { status: 503, retry_after: 0, times: 10 });
    assert.equal(r.calls, 3, 'the submit budget is 3 attempts');
    assert.equal(jobsFor(prompt).length, 0);
    assert.ok(r.err instanceof FalCallError);
    assert.equal(r.err.status, 503);
    assert.equal(r.err.ambiguous, false);
    assert.equal(r.err.strayIds.length, 3);
  });

  it('a 503 that fal answers after making the job anyway: resent as a refusal, and the first job is reported (REFERENCE §3b)', async () => {
    const prompt = '503 commit';
    const r = await submitUnder(prompt, { status: 503, retry_after: 0, commit: true, times: 1 });
    assert.equal(r.calls, 2);
    const jobs = jobsFor(prompt);
    assert.equal(jobs.length, 2, 'the emulator made a job on the refused attempt');
    assert.ok(r.ok, String(r.err));
    const first = jobs.find((j) => j.request_id !== r.ok!.falRequestId)!;
    assert.deepEqual(r.ok.strayIds, [first.request_id], 'never a second job we do not know of');
  });

  it('connection refused (the request never left): sent again, one job', async () => {
    const closed = createServer();
    await new Promise<void>((res) => closed.listen(0, '127.0.0.1', () => res()));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((res) => closed.close(() => res()));
    let attempts = 0;
    const refusedOnce = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      retry: { submit: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } },
      fetchImpl: (input, init) => (attempts++ === 0 ? fetch(`http://127.0.0.1:${port}/`, init) : fetch(input as string, init)),
    });
    const prompt = 'refused connection';
    const before = submits();
    const { falRequestId, strayIds } = await refusedOnce.submit(ENDPOINT, { prompt, image_size: 'square' });
    assert.equal(attempts, 2);
    assert.equal(submits() - before, 1);
    assert.deepEqual(jobsFor(prompt).map((j) => j.request_id), [falRequestId]);
    assert.deepEqual(strayIds, []);
  });

  it('a 200 whose body breaks off: the client\'s own resend is refused unsent, and the submit is ambiguous', async () => {
    let sent = 0;
    const broken = createFalGateway({
      credentials: 'k:s',
      fetchImpl: async () => {
        sent++;
        const body = new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(new TextEncoder().encode('{"request_id":"req-'));
            // What undici reports when the socket dies mid-body: the client retries this shape.
            c.error(Object.assign(new TypeError('terminated'), { cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }) }));
          },
        });
        return new Response(body, { status: 200, headers: { 'content-type': 'application/json', 'x-fal-request-id': 'req-1' } });
      },
    });
    const err = await broken.submit(ENDPOINT, { prompt: 'broken body' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.equal(sent, 1, 'sent once');
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.ambiguous, true);
    assert.equal(err.falRequestId, 'req-1', 'the id on the broken answer is the job’s, recorded as such');
    assert.deepEqual(err.strayIds, []);
  });

  it('the fact behind it: the fal client alone resends a submit whose answer was lost, making a second job', async () => {
    const client = createFalClient({ credentials: 'k:s', fetch: createRedirectFetch({ baseUrl: emu.url }), retry: { maxRetries: 0, baseDelay: 0, maxDelay: 0 } });
    const prompt = 'bare client reset';
    emu.armFault({ phase: 'submit', kind: 'reset', commit: true, prompt_contains: prompt });
    const { request_id } = await client.queue.submit(ENDPOINT, { input: { prompt, image_size: 'square' } });
    const jobs = jobsFor(prompt);
    assert.equal(jobs.length, 2, 'maxRetries: 0 notwithstanding');
    assert.ok(jobs.some((j) => j.request_id !== request_id));
  });
});

describe('every submit carries fal\'s start deadline, from REQUEST_TIMEOUT_MS', () => {
  it('x-fal-request-timeout is the request deadline in whole seconds, rounded up', () => {
    assert.deepEqual(submitHeaders({ requestTimeoutMs: 300_000 }), { 'x-fal-request-timeout': '300' });
    assert.deepEqual(submitHeaders({ requestTimeoutMs: 1_500 }), { 'x-fal-request-timeout': '2' });
    assert.deepEqual(submitHeaders({ requestTimeoutMs: 1_000 }), { 'x-fal-request-timeout': '1' });
    assert.deepEqual(submitHeaders({}), {});
  });

  it('FAL_STORE_IO=0 sends X-Fal-Store-IO: 0 on the submit; fal keeps no payloads of the job', async (t) => {
    const emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 20, imageMode: 'cheap' });
    t.after(() => emu.close());
    assert.deepEqual(submitHeaders({ storeIo: false }), { 'x-fal-store-io': '0' });
    assert.deepEqual(submitHeaders({ storeIo: true }), {}, 'storing is fal\'s default: nothing to send');
    const off = loadConfig({ FAL_STORE_IO: '0' }).falStoreIo;
    assert.equal(off, false);
    assert.equal(loadConfig({}).falStoreIo, true);
    assert.throws(() => loadConfig({ FAL_STORE_IO: 'sometimes' }), /FAL_STORE_IO must be true or false/);
    const fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url, storeIo: off });
    const { falRequestId } = await fal.submit(ENDPOINT, { prompt: 'private', image_size: 'square' });
    assert.equal(emu.job(falRequestId)!.store_io, false);
    const kept = await createFalGateway({ credentials: 'k:s', baseUrl: emu.url }).submit(ENDPOINT, { prompt: 'kept', image_size: 'square' });
    assert.equal(emu.job(kept.falRequestId)!.store_io, undefined);
  });

  it('a job left waiting past our deadline expires at fal (504, unbilled) instead of running later', async (t) => {
    // One runner slot, held by a job that never finishes: the next job waits in fal's queue.
    const emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 20, imageMode: 'cheap', concurrency: 1 });
    t.after(() => emu.close());
    const fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url, requestTimeoutMs: 1_500 });
    emu.armFault({ kind: 'never_finish', prompt_contains: 'holds the slot' });
    const holder = await fal.submit(ENDPOINT, { prompt: 'holds the slot', image_size: 'square' });
    const left = await fal.submit(ENDPOINT, { prompt: 'left behind', image_size: 'square' });
    const job = emu.job(left.falRequestId)!;
    assert.equal(job.start_deadline! - job.submitted_at, 2_000, 'fal was told 2 s (1.5 s rounded up)');

    // Nobody waits for it; fal ends it once its start deadline passes.
    const deadline = Date.now() + 30_000;
    while (emu.job(left.falRequestId)!.status !== 'COMPLETED' && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    const expired = emu.job(left.falRequestId)!;
    assert.equal(expired.outcome, 'error');
    assert.equal(expired.error?.status, 504);
    assert.equal(expired.started_at, undefined, 'it never ran');
    const err = await fal.result(ENDPOINT, left.falRequestId).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof FalCallError && err.status === 504, String(err));

    // The slot frees up: the expired job stays expired and nothing of it is billed.
    assert.ok(emu.finishJob(holder.falRequestId));
    assert.equal(emu.job(left.falRequestId)!.outcome, 'error');
    assert.deepEqual(emu.billing().filter((b) => b.request_id === left.falRequestId), []);
  });
});
