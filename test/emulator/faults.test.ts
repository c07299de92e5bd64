import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { ApiError, ValidationError } from '@fal-ai/client';
import { appOf, emulator, falClient, LORA, raw, rawSubmit, TURBO, waitFor } from './helpers.js';

const statusPath = (id: string) => `queue.fal.run/${appOf(TURBO)}/requests/${id}/status`;
const resultPath = (id: string) => `queue.fal.run/${appOf(TURBO)}/requests/${id}`;
const cancelPath = (id: string) => `queue.fal.run/${appOf(TURBO)}/requests/${id}/cancel`;

describe('armed faults', () => {
  test('arming: POST /_emulator/faults validates, GET lists remaining and hits, DELETE clears', async (t) => {
    const emu = await emulator(t);
    const bad = await raw(emu, 'POST', '_emulator/faults', { key: null, body: { kind: 'http_error', phase: 'submit' } });
    assert.equal(bad.status, 400);
    assert.match(bad.json.detail, /status/);
    const armed = await raw(emu, 'POST', '_emulator/faults', {
      key: null,
      body: { faults: [{ phase: 'submit', status: 500, times: 2, prompt_contains: 'boom' }] },
    });
    assert.equal(armed.status, 201);
    assert.equal(armed.json.faults[0].kind, 'http_error');
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'calm' } })).status, 200);
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'boom 1' } })).status, 500);
    const listed = await raw(emu, 'GET', '_emulator/faults', { key: null });
    assert.equal(listed.json.faults[0].remaining, 1);
    assert.equal(listed.json.faults[0].hits, 1);
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'boom 2' } })).status, 500);
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'boom 3' } })).status, 200);
    await raw(emu, 'DELETE', '_emulator/faults', { key: null });
    assert.deepEqual(emu.faults(), []);
  });

  test('matching by endpoint id', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ phase: 'submit', status: 503, endpoint: LORA, times: 5 });
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } })).status, 200);
    assert.equal((await raw(emu, 'POST', `queue.fal.run/${LORA}`, { body: { prompt: 'p' } })).status, 503);
  });

  test('422 with detail reaches the client as a ValidationError', async (t) => {
    const emu = await emulator(t);
    const detail = [{ loc: ['body', 'prompt'], msg: 'prompt is not allowed', type: 'value_error.content_policy' }];
    emu.armFault({ phase: 'submit', status: 422, detail });
    await assert.rejects(falClient(emu).queue.submit(TURBO, { input: { prompt: 'p' } }), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.deepEqual(err.fieldErrors, detail);
      return true;
    });
  });

  test('429 carries retry-after; 502 and 503 answer JSON errors (raw HTTP: the client would retry them)', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { phase: 'submit', status: 429, retry_after: 3 },
      { phase: 'submit', status: 502 },
      { phase: 'submit', status: 503, retry_after: 7 },
    ]);
    const r429 = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(r429.status, 429);
    assert.equal(r429.headers.get('retry-after'), '3');
    assert.equal(typeof r429.json.detail, 'string');
    assert.ok(r429.headers.get('x-fal-request-id'));
    const r502 = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(r502.status, 502);
    const r503 = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(r503.status, 503);
    assert.equal(r503.headers.get('retry-after'), '7');
    assert.equal(emu.jobs().length, 0);
  });

  test('401 and 403 are not retried by the client', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { phase: 'submit', status: 401 },
      { phase: 'submit', status: 403, detail: 'User is locked' },
    ]);
    const fal = falClient(emu);
    await assert.rejects(fal.queue.submit(TURBO, { input: { prompt: 'p' } }), (e: unknown) => e instanceof ApiError && e.status === 401);
    await assert.rejects(
      fal.queue.submit(TURBO, { input: { prompt: 'p' } }),
      (e: unknown) => e instanceof ApiError && e.status === 403 && (e.body as any).detail === 'User is locked',
    );
    assert.equal(emu.stats().submit, 2);
  });

  test('500 on result is not retried: the client surfaces it at once', async (t) => {
    const emu = await emulator(t);
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'p' } });
    await waitFor(() => emu.job(request_id)?.status === 'COMPLETED' || undefined);
    emu.armFault({ phase: 'result', status: 500 });
    await assert.rejects(fal.queue.result(TURBO, { requestId: request_id }), (e: unknown) => e instanceof ApiError && e.status === 500);
    assert.equal(emu.stats().result, 1);
    // The fault is spent; the job itself is fine and billed.
    const ok = await fal.queue.result(TURBO, { requestId: request_id });
    assert.equal((ok.data as any).images.length, 1);
  });

  test('status-phase 500, 502 and 503 (raw HTTP: the client retries all three on status)', async (t) => {
    const emu = await emulator(t);
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    emu.armFault([
      { phase: 'status', status: 500 },
      { phase: 'status', status: 502 },
      { phase: 'status', status: 503 },
    ]);
    assert.equal((await raw(emu, 'GET', statusPath(id))).status, 500);
    assert.equal((await raw(emu, 'GET', statusPath(id))).status, 502);
    assert.equal((await raw(emu, 'GET', statusPath(id))).status, 503);
    assert.ok([200, 202].includes((await raw(emu, 'GET', statusPath(id))).status));
  });

  test('client retries absorb one submit 503 and one connection reset (~1 s backoff)', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { phase: 'submit', status: 503, prompt_contains: 'five-oh-three' },
      { kind: 'reset', phase: 'submit', prompt_contains: 'reset' },
    ]);
    const fal = falClient(emu);
    const started = Date.now();
    const [a, b] = await Promise.all([
      fal.queue.submit(TURBO, { input: { prompt: 'five-oh-three' } }),
      fal.queue.submit(TURBO, { input: { prompt: 'reset' } }),
    ]);
    assert.ok(a.request_id && b.request_id);
    assert.ok(Date.now() - started >= 700, 'the client waited out its backoff');
    assert.equal(emu.stats().submit, 4);
    assert.equal(emu.jobs().length, 2);
  });

  test('connection reset: the socket is destroyed', async (t) => {
    const emu = await emulator(t);
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    emu.armFault({ kind: 'reset', phase: 'result' });
    await assert.rejects(raw(emu, 'GET', resultPath(id)), (e: unknown) => e instanceof TypeError);
  });

  test('commit: the job is created (and bills) though the submit call fails', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ phase: 'submit', status: 503, commit: true });
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' } });
    assert.equal(r.status, 503);
    const id = r.headers.get('x-fal-request-id')!;
    await waitFor(() => emu.job(id)?.status === 'COMPLETED' || undefined);
    assert.equal(emu.billing().length, 1);
    assert.equal(emu.billing()[0]!.request_id, id);
  });

  test('delay_ms slows the matched call', async (t) => {
    const emu = await emulator(t);
    const id = await rawSubmit(emu, TURBO, { prompt: 'p' });
    emu.armFault({ kind: 'delay', phase: 'status', delay_ms: 300 });
    const started = Date.now();
    const r = await raw(emu, 'GET', statusPath(id));
    assert.ok([200, 202].includes(r.status));
    assert.ok(Date.now() - started >= 290);
  });

  test('latency: one job takes as long as the fault says', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'latency', latency_ms: 400, queue_ms: 100 });
    const started = Date.now();
    await falClient(emu).subscribe(TURBO, { input: { prompt: 'slow job' }, pollInterval: 25 });
    assert.ok(Date.now() - started >= 400);
    const job = emu.jobs()[0]!;
    assert.equal(job.start_at - job.submitted_at, 100);
    assert.equal(job.run_ms, 300);
    assert.equal(job.done_at - job.started_at!, 300);
  });

  test('never_finish keeps the job IN_PROGRESS until released', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'never_finish' });
    const id = await rawSubmit(emu, TURBO, { prompt: 'forever' });
    await new Promise((r) => setTimeout(r, 150));
    const s = await raw(emu, 'GET', statusPath(id));
    assert.equal(s.json.status, 'IN_PROGRESS');
    assert.equal((await raw(emu, 'GET', resultPath(id))).status, 400);
    assert.ok(emu.finishJob(id));
    const done = await raw(emu, 'GET', resultPath(id));
    assert.equal(done.status, 200);
    assert.equal(emu.billing().length, 1);
  });

  test('non_json: a 200 text/html status body is not a status the client understands', async (t) => {
    const emu = await emulator(t);
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'p' } });
    emu.armFault([
      { kind: 'non_json', phase: 'status' },
      { kind: 'non_json', phase: 'result', status: 502, body: '<html>502 Bad Gateway</html>' },
    ]);
    const status = (await fal.queue.status(TURBO, { requestId: request_id })) as unknown;
    assert.equal(typeof status, 'string');
    const r = await raw(emu, 'GET', resultPath(request_id));
    assert.equal(r.status, 502);
    assert.equal(r.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(r.text, '<html>502 Bad Gateway</html>');
  });

  test('nsfw flags chosen images; with the safety checker on they come back black', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ kind: 'nsfw', nsfw_indexes: [1] });
    const result = await falClient(emu).subscribe(TURBO, {
      input: { prompt: 'p', num_images: 2, image_size: { width: 256, height: 256 } },
      pollInterval: 20,
    });
    const data = result.data as any;
    assert.deepEqual(data.has_nsfw_concepts, [false, true]);
    const [ok, blocked] = await Promise.all(
      data.images.map(async (im: any) => sharp(Buffer.from(await (await fetch(im.url)).arrayBuffer())).stats()),
    );
    const mean = (s: any) => s.channels.slice(0, 3).reduce((a: number, c: any) => a + c.mean, 0) / 3;
    assert.ok(mean(blocked) < 40, `blocked image is dark (${mean(blocked)})`);
    assert.ok(mean(ok) > mean(blocked));
    assert.equal(emu.billing().length, 1, 'fal bills a job whose images were flagged');
  });

  test('cancel_refused: rejected answers 400 and the job runs on; ignored answers 202 and it still bills', async (t) => {
    const emu = await emulator(t, { latencyMs: 200 });
    emu.armFault([{ kind: 'cancel_refused' }, { kind: 'cancel_refused', mode: 'ignored' }]);
    const a = await rawSubmit(emu, TURBO, { prompt: 'a' });
    const b = await rawSubmit(emu, TURBO, { prompt: 'b' });
    const ra = await raw(emu, 'PUT', cancelPath(a));
    assert.equal(ra.status, 400);
    assert.deepEqual(ra.json, { status: 'ALREADY_COMPLETED' });
    const rb = await raw(emu, 'PUT', cancelPath(b));
    assert.equal(rb.status, 202);
    await waitFor(() => (emu.billing().length === 2 ? true : undefined));
    assert.equal(emu.job(a)!.outcome, 'ok');
    assert.equal(emu.job(b)!.outcome, 'ok');
  });

  test('fail_after_start: status says COMPLETED, the result is the error; fal\'s 5xx bills nothing, an app 422 bills', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { kind: 'fail_after_start', prompt_contains: 'crash', detail: 'CUDA out of memory' },
      { kind: 'fail_after_start', prompt_contains: 'invalid', status: 422 },
    ]);
    const fal = falClient(emu);
    await assert.rejects(fal.subscribe(TURBO, { input: { prompt: 'crash' }, pollInterval: 20 }), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 500);
      assert.deepEqual(e.body, { detail: 'CUDA out of memory', error_type: 'runner_server_error' });
      return true;
    });
    const failed = emu.jobs().find((j) => j.input.prompt === 'crash')!;
    const s = await raw(emu, 'GET', statusPath(failed.request_id));
    assert.equal(s.json.status, 'COMPLETED');
    const r = await raw(emu, 'GET', resultPath(failed.request_id));
    assert.equal(r.headers.get('x-fal-billable-units'), '0');
    assert.equal(r.headers.get('x-fal-error-type'), 'runner_server_error');
    assert.equal(r.headers.get('x-fal-retryable'), 'false');
    assert.deepEqual(emu.billing(), []);
    await assert.rejects(fal.subscribe(TURBO, { input: { prompt: 'invalid' }, pollInterval: 20 }), (e: unknown) => e instanceof ValidationError);
    const billed = emu.billing();
    assert.equal(billed.length, 1);
    assert.deepEqual(
      { outcome: billed[0]!.outcome, status: billed[0]!.status, units: billed[0]!.units, usd: billed[0]!.usd },
      { outcome: 'error', status: 422, units: '1', usd: '0.005' },
    );
  });

  test('stream-phase fault: the streaming subscription fails', async (t) => {
    const emu = await emulator(t);
    emu.armFault({ phase: 'stream', status: 500 });
    await assert.rejects(
      falClient(emu).subscribe(TURBO, { input: { prompt: 'p' }, mode: 'streaming' }),
      (e: unknown) => e instanceof ApiError && e.status === 500,
    );
  });

  test('run-phase and upload-phase faults', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { phase: 'run', status: 400, detail: 'no' },
      { phase: 'upload', status: 401 },
    ]);
    const fal = falClient(emu);
    await assert.rejects(fal.run(TURBO, { input: { prompt: 'p' } }), (e: unknown) => e instanceof ApiError && e.status === 400);
    await assert.rejects(fal.storage.upload(new Blob(['x'])), (e: unknown) => e instanceof ApiError && e.status === 401);
  });

  test('x-emulator-fault header injects a fault into one call', async (t) => {
    const emu = await emulator(t);
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, {
      body: { prompt: 'p', num_images: 3 },
      headers: { 'x-emulator-fault': JSON.stringify([{ kind: 'nsfw', nsfw_indexes: [2] }, { kind: 'never_finish' }]) },
    });
    assert.equal(r.status, 200);
    const job = emu.job(r.json.request_id)!;
    assert.equal(job.never_finish, true);
    assert.deepEqual(job.nsfw_indexes, [2]);
    const h = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, {
      body: { prompt: 'p' },
      headers: { 'x-emulator-fault': JSON.stringify({ status: 429 }) },
    });
    assert.equal(h.status, 429);
    const bad = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' }, headers: { 'x-emulator-fault': '{nope' } });
    assert.equal(bad.status, 400);
  });
});
