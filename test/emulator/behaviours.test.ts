/**
 * The real-fal behaviours of the emulator (src/emulator/behaviours.ts and the
 * job engine), each driven with the real @fal-ai/client where it has a call,
 * and plain HTTP where it has none: on the defaults, with each fault, and with
 * each `kinder` opt-out.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError, ValidationError } from '@fal-ai/client';
import { appOf, emulator, falClient, LORA, raw, rawSubmit, receiver, TURBO, waitFor } from './helpers.js';

const statusPath = (id: string, endpoint = TURBO) => `queue.fal.run/${appOf(endpoint)}/requests/${id}/status`;
const resultPath = (id: string, endpoint = TURBO) => `queue.fal.run/${appOf(endpoint)}/requests/${id}`;
const cancelPath = (id: string, endpoint = TURBO) => `queue.fal.run/${appOf(endpoint)}/requests/${id}/cancel`;
const done = (emu: { job(id: string): { status: string } | undefined }, id: string) => () =>
  emu.job(id)?.status === 'COMPLETED' ? true : undefined;

describe('validation after queueing', () => {
  test('invalid queue input is accepted, then the job fails with 422, bills, and the webhook says ERROR', async (t) => {
    const emu = await emulator(t);
    const hook = await receiver(t);
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'late', num_images: 9 } as any, webhookUrl: hook.url });
    await waitFor(done(emu, request_id));
    const s = await raw(emu, 'GET', statusPath(request_id));
    assert.equal(s.json.status, 'COMPLETED');
    assert.equal(s.json.error_type, 'value_error.number.not_le');
    await assert.rejects(fal.queue.result(TURBO, { requestId: request_id }), (e: unknown) => {
      assert.ok(e instanceof ValidationError);
      assert.equal(e.getFieldErrors('num_images')[0]!.type, 'value_error.number.not_le');
      return true;
    });
    const r = await raw(emu, 'GET', resultPath(request_id));
    assert.equal(r.headers.get('x-fal-billable-units'), '1');
    assert.equal(r.headers.get('x-fal-retryable'), 'false');
    assert.deepEqual(
      emu.billing().map((b) => [b.request_id, b.outcome, b.status, b.usd]),
      [[request_id, 'error', 422, '0.005']],
    );
    await waitFor(() => (hook.deliveries.length === 1 ? true : undefined));
    const body = JSON.parse(hook.deliveries[0]!.body.toString());
    assert.equal(body.status, 'ERROR');
    assert.equal(body.error, 'Invalid status code: 422');
  });

  test('fal.run still answers 422 at once; the submit_validation fault brings it back on the queue', async (t) => {
    const emu = await emulator(t);
    const run = await raw(emu, 'POST', `fal.run/${TURBO}`, { body: { num_images: 2 } });
    assert.equal(run.status, 422);
    emu.armFault({ kind: 'submit_validation' });
    await assert.rejects(falClient(emu).queue.submit(TURBO, { input: { image_size: 'huge' } as any }), (e: unknown) => e instanceof ValidationError);
    assert.equal(emu.jobs().length, 0);
    assert.deepEqual(emu.billing(), []);
  });
});

describe('failed jobs that bill, and fal errors that do not', () => {
  test('content policy: a 422 with fal\'s extra fields, billed, not retryable', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'content_policy', categories: ['violence'] });
    await assert.rejects(falClient(emu).subscribe(TURBO, { input: { prompt: 'flag me' }, pollInterval: 20 }), (e: unknown) => {
      assert.ok(e instanceof ValidationError);
      const d = e.fieldErrors[0] as any;
      assert.deepEqual(
        { type: d.type, loc: d.loc, input: d.input, categories: d.categories, url: d.url },
        {
          type: 'content_policy_violation',
          loc: ['body', 'prompt'],
          input: 'flag me',
          categories: ['violence'],
          url: 'https://docs.fal.ai/errors#content_policy_violation',
        },
      );
      return true;
    });
    const [entry] = emu.billing();
    assert.equal(entry?.outcome, 'error');
    assert.equal(entry?.units, '1');
  });

  test('a LoRA on the emulator CDN that does not exist fails the job (billed); an uploaded one works', async (t) => {
    const emu = await emulator(t);
    const fal = falClient(emu);
    const gone = `${emu.url}/v3.fal.media/files/nope/missing.safetensors`;
    await assert.rejects(fal.subscribe(LORA, { input: { prompt: 'p', loras: [{ path: gone }] }, pollInterval: 20 }), (e: unknown) => {
      assert.ok(e instanceof ValidationError);
      assert.deepEqual(e.fieldErrors[0]!.loc, ['body', 'loras', 0, 'path']);
      assert.equal(e.fieldErrors[0]!.type, 'file_download_error');
      return true;
    });
    assert.deepEqual(emu.billing().map((b) => [b.outcome, b.usd]), [['error', '0.0085']]);
    const url = await fal.storage.upload(new Blob([Buffer.alloc(1024, 1)], { type: 'application/octet-stream' }));
    const ok = await fal.subscribe(LORA, { input: { prompt: 'p', loras: [{ path: url }, { path: 'owner/repo' }] }, pollInterval: 20 });
    assert.equal((ok.data as any).images.length, 1);
    emu.armFault({ kind: 'lora_download_failed', billable_units: '0' });
    await assert.rejects(fal.subscribe(LORA, { input: { prompt: 'p', loras: [{ path: url }] }, pollInterval: 20 }), (e: unknown) => e instanceof ValidationError);
    assert.equal(emu.billing().length, 2, 'the fault billed nothing, as it said');
  });

  test('fal\'s own 5xx never bill and carry fal\'s error type; 503 is retryable', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'fail_after_start', status: 503, detail: 'runner went away' });
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    await waitFor(done(emu, id));
    const r = await raw(emu, 'GET', resultPath(id));
    assert.equal(r.status, 503);
    assert.deepEqual(r.json, { detail: 'runner went away', error_type: 'runner_disconnected' });
    assert.equal(r.headers.get('x-fal-error-type'), 'runner_disconnected');
    assert.equal(r.headers.get('x-fal-retryable'), 'true');
    assert.equal(r.headers.get('x-fal-billable-units'), '0');
    assert.deepEqual(emu.billing(), []);
  });

  test('kinder unbilled_failures: app errors bill nothing', async (t) => {
    const emu = await emulator(t, { kinder: ['unbilled_failures'] });
    const id = await rawSubmit(emu, TURBO, { prompt: 'p', seed: 'x' });
    await waitFor(done(emu, id));
    const r = await raw(emu, 'GET', resultPath(id));
    assert.equal(r.status, 422);
    assert.equal(r.headers.get('x-fal-billable-units'), '0');
    assert.deepEqual(emu.billing(), []);
  });
});

describe('error hints on injected call errors', () => {
  test('request errors carry error_type, X-Fal-Error-Type and X-Fal-Retryable', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { phase: 'submit', status: 503 },
      { phase: 'submit', status: 500, error_type: 'internal_error' },
      { phase: 'submit', status: 400 },
    ]);
    const a = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(a.json.error_type, 'runner_disconnected');
    assert.equal(a.headers.get('x-fal-retryable'), 'true');
    const b = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(b.headers.get('x-fal-error-type'), 'internal_error');
    assert.equal(b.headers.get('x-fal-retryable'), 'false');
    const c = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(c.status, 400);
    assert.equal(c.headers.get('x-fal-error-type'), null, 'a plain 4xx from a fault stays as it was armed');
  });
});

describe('fal retries its runner', () => {
  test('runner_retry: the result and the webhook name a new gateway id; the bill stays keyed by the submit id', async (t) => {
    const emu = await emulator(t);
    const hook = await receiver(t);
    emu.armFault({ kind: 'runner_retry' });
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'retried' }, webhookUrl: hook.url });
    await waitFor(done(emu, request_id));
    const result = await fal.queue.result(TURBO, { requestId: request_id });
    assert.notEqual(result.requestId, request_id);
    const gateway = emu.job(request_id)!.gateway_request_id;
    assert.equal(result.requestId, gateway);
    await waitFor(() => (hook.deliveries.length === 1 ? true : undefined));
    const body = JSON.parse(hook.deliveries[0]!.body.toString());
    assert.deepEqual([body.request_id, body.gateway_request_id], [request_id, gateway]);
    assert.deepEqual(emu.billing().map((b) => [b.request_id, b.gateway_request_id]), [[request_id, gateway]]);
  });
});

describe('outputs', () => {
  test('omit_dimensions: images come without width and height', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'omit_dimensions' });
    const { data } = await falClient(emu).subscribe(TURBO, { input: { prompt: 'p', image_size: 'square' }, pollInterval: 20 });
    const im = (data as any).images[0];
    assert.equal('width' in im || 'height' in im, false);
    assert.equal(typeof im.url, 'string');
    assert.equal(emu.billing()[0]?.units, '1', 'fal still billed the job');
  });
});

describe('cancel', () => {
  test('a queued job is removed and not billed; a running job runs on and bills', async (t) => {
    const emu = await emulator(t, { concurrency: 1 });
    emu.armFault({ kind: 'latency', latency_ms: 1500, queue_ms: 0, prompt_contains: 'running' });
    const running = await rawSubmit(emu, TURBO, { prompt: 'running' });
    await waitFor(() => (emu.job(running)?.status === 'IN_PROGRESS' ? true : undefined));
    const queued = await rawSubmit(emu, TURBO, { prompt: 'queued' });
    const q = await raw(emu, 'PUT', cancelPath(queued));
    assert.equal(q.status, 202);
    assert.equal(emu.job(queued)!.outcome, 'cancelled');
    const r = await raw(emu, 'PUT', cancelPath(running));
    assert.deepEqual([r.status, r.json], [202, { status: 'CANCELLATION_REQUESTED' }]);
    await waitFor(done(emu, running), 10000);
    assert.equal(emu.job(running)!.outcome, 'ok');
    assert.deepEqual(emu.billing().map((b) => b.request_id), [running]);
    const again = await raw(emu, 'PUT', cancelPath(running));
    assert.deepEqual([again.status, again.json], [400, { status: 'ALREADY_COMPLETED' }]);
  });

  test('kinder cancel_stops_running: the running job ends cancelled, unbilled', async (t) => {
    const emu = await emulator(t, { kinder: ['cancel_stops_running'] });
    emu.armFault({ kind: 'never_finish' });
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    await waitFor(() => (emu.job(id)?.status === 'IN_PROGRESS' ? true : undefined));
    assert.equal((await raw(emu, 'PUT', cancelPath(id))).status, 202);
    assert.equal(emu.job(id)!.outcome, 'cancelled');
    assert.deepEqual(emu.billing(), []);
  });
});

describe('account concurrency', () => {
  test('at most `concurrency` jobs run; the rest wait IN_QUEUE with real positions, and all finish', async (t) => {
    const emu = await emulator(t, { concurrency: 2 });
    emu.armFault({ kind: 'never_finish', times: 2 });
    const ids: string[] = [];
    // The two slot holders first, running before the others are even submitted.
    for (let i = 0; i < 2; i++) ids.push(await rawSubmit(emu, TURBO, { prompt: `job ${i}` }));
    await waitFor(() => (emu.job(ids[0]!)?.status === 'IN_PROGRESS' && emu.job(ids[1]!)?.status === 'IN_PROGRESS' ? true : undefined));
    for (let i = 2; i < 5; i++) ids.push(await rawSubmit(emu, TURBO, { prompt: `job ${i}` }));
    // Long past the 30 ms latency: the others still wait, for the slots.
    await new Promise((r) => setTimeout(r, 300));
    const statuses = await Promise.all(ids.map(async (id) => (await raw(emu, 'GET', statusPath(id))).json));
    assert.deepEqual(statuses.map((s) => s.status), ['IN_PROGRESS', 'IN_PROGRESS', 'IN_QUEUE', 'IN_QUEUE', 'IN_QUEUE']);
    assert.deepEqual(statuses.slice(2).map((s) => s.queue_position), [0, 1, 2]);
    emu.finishJob(ids[0]!);
    emu.finishJob(ids[1]!);
    for (const id of ids) await waitFor(done(emu, id), 10000);
    assert.equal(emu.billing().length, 5);
  });

  test('kinder unlimited_concurrency: nothing waits for a slot', async (t) => {
    const emu = await emulator(t, { kinder: ['unlimited_concurrency'], concurrency: 1 });
    emu.armFault({ kind: 'never_finish', times: 3 });
    const ids = [await rawSubmit(emu, TURBO, { prompt: 'a' }), await rawSubmit(emu, TURBO, { prompt: 'b' }), await rawSubmit(emu, TURBO, { prompt: 'c' })];
    await waitFor(() => (ids.every((id) => emu.job(id)?.status === 'IN_PROGRESS') ? true : undefined));
  });
});

describe('X-Fal-Request-Timeout (a start deadline)', () => {
  test('a job not started by its deadline ends 504 request_timeout (user), unbilled; a started one is not cut', async (t) => {
    const emu = await emulator(t, { concurrency: 1 });
    // The client accepts start timeouts above 1 s only.
    emu.armFault({ kind: 'latency', latency_ms: 3500, queue_ms: 0, prompt_contains: 'hog' });
    const fal = falClient(emu);
    const hog = await fal.queue.submit(TURBO, { input: { prompt: 'hog' }, startTimeout: 2 });
    await waitFor(() => (emu.job(hog.request_id)?.status === 'IN_PROGRESS' ? true : undefined));
    const starved = await fal.queue.submit(TURBO, { input: { prompt: 'starved' }, startTimeout: 1.5 });
    await waitFor(done(emu, starved.request_id), 10000);
    const r = await raw(emu, 'GET', resultPath(starved.request_id));
    assert.equal(r.status, 504);
    assert.deepEqual(r.json, { detail: 'Request timed out', error_type: 'request_timeout' });
    assert.equal(r.headers.get('x-fal-request-timeout-type'), 'user');
    assert.equal(r.headers.get('x-fal-retryable'), 'false');
    await assert.rejects(fal.queue.result(TURBO, { requestId: starved.request_id }), (e: unknown) => e instanceof ApiError && e.status === 504);
    await waitFor(done(emu, hog.request_id), 10000);
    assert.equal(emu.job(hog.request_id)!.outcome, 'ok', 'the deadline bounds the start only');
    assert.deepEqual(emu.billing().map((b) => b.request_id), [hog.request_id]);
  });

  test('an invalid timeout is a 400 bad_request and makes no job', async (t) => {
    const emu = await emulator(t);
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' }, headers: { 'x-fal-request-timeout': '0.05' } });
    assert.equal(r.status, 400);
    assert.equal(r.headers.get('x-fal-error-type'), 'bad_request');
    assert.equal(emu.jobs().length, 0);
  });
});

describe('media lifetime', () => {
  test('output URLs stop working after the media TTL; the lifecycle header sets it per request', async (t) => {
    const emu = await emulator(t, { mediaTtlS: 3 });
    const fal = falClient(emu);
    const short = await fal.subscribe(TURBO, { input: { prompt: 'p', image_size: { width: 64, height: 64 } }, pollInterval: 20 });
    const url = (short.data as any).images[0].url as string;
    assert.equal((await fetch(url)).status, 200);
    const long = await fal.subscribe(TURBO, {
      input: { prompt: 'p', image_size: { width: 64, height: 64 } },
      pollInterval: 20,
      storageSettings: { expiresIn: '1h' },
    });
    const kept = (long.data as any).images[0].url as string;
    await waitFor(async () => ((await fetch(url)).status === 404 ? true : undefined), 15000, 200);
    assert.equal((await fetch(kept)).status, 200);
  });

  test('uploaded files expire too (fal applies one retention to inputs and outputs); the upload lifecycle header sets it', async (t) => {
    const emu = await emulator(t, { mediaTtlS: 3 });
    const fal = falClient(emu);
    const blob = () => new Blob([Buffer.alloc(64, 7)], { type: 'application/octet-stream' });
    const url = await fal.storage.upload(blob());
    const kept = await fal.storage.upload(blob(), { lifecycle: { expiresIn: '1h' } });
    assert.equal((await fetch(url)).status, 200);
    await waitFor(async () => ((await fetch(url)).status === 404 ? true : undefined), 15000, 200);
    assert.equal((await fetch(kept)).status, 200);
    // A LoRA that has expired fails the job like a missing one.
    await assert.rejects(
      fal.subscribe(LORA, { input: { prompt: 'p', loras: [{ path: url }] }, pollInterval: 20 }),
      (e: unknown) => e instanceof ValidationError && e.fieldErrors[0]!.type === 'file_download_error',
    );
  });

  test('kinder media_never_expires: URLs carry no expiry', async (t) => {
    const emu = await emulator(t, { kinder: ['media_never_expires'], mediaTtlS: 1 });
    const { data } = await falClient(emu).subscribe(TURBO, { input: { prompt: 'p', image_size: { width: 64, height: 64 } }, pollInterval: 20 });
    const token = ((data as any).images[0].url as string).split('/').pop()!.split('.')[0]!;
    assert.equal('x' in JSON.parse(Buffer.from(token, 'base64url').toString()), false);
  });
});

describe('webhooks', () => {
  test('webhook_payload_error: payload null with payload_error, signed for the configured user', async (t) => {
    const emu = await emulator(t, { webhookUserId: 'acct-42' });
    const hook = await receiver(t);
    emu.armFault({ kind: 'webhook_payload_error' });
    const { request_id } = await falClient(emu).queue.submit(TURBO, { input: { prompt: 'p' }, webhookUrl: hook.url });
    await waitFor(() => (hook.deliveries.length === 1 ? true : undefined));
    const d = hook.deliveries[0]!;
    const body = JSON.parse(d.body.toString());
    assert.deepEqual([body.request_id, body.status, body.payload, typeof body.payload_error], [request_id, 'OK', null, 'string']);
    assert.equal(d.headers['x-fal-webhook-user-id'], 'acct-42');
    assert.equal((await raw(emu, 'GET', resultPath(request_id))).status, 200, 'the result route still has the output');
  });
});

describe('a submit whose answer is lost', () => {
  test('reset with commit: the job exists and bills though the caller saw a reset; the client resends it', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ phase: 'submit', kind: 'reset', commit: true });
    await assert.rejects(raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'lost' } }));
    assert.equal(emu.jobs().length, 1);
    await waitFor(done(emu, emu.jobs()[0]!.request_id));
    assert.equal(emu.billing().length, 1);
    // The real client retries a reset submit by itself: one call, two billable jobs.
    emu.armFault({ phase: 'submit', kind: 'reset', commit: true });
    const { request_id } = await falClient(emu).queue.submit(TURBO, { input: { prompt: 'twice' } });
    const twice = emu.jobs().filter((j) => j.input.prompt === 'twice');
    assert.equal(twice.length, 2);
    assert.ok(twice.some((j) => j.request_id === request_id));
  });
});
