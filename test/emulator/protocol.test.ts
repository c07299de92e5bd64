import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError, ValidationError } from '@fal-ai/client';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { appOf, emulator, falClient, LORA, raw, rawSubmit, TURBO, waitFor } from './helpers.js';

describe('fal queue protocol with the real @fal-ai/client', () => {
  let emu: Emulator;
  before(async () => {
    emu = await startEmulator({ port: 0, latencyMs: 30 });
  });
  after(() => emu.close());

  test('subscribe (polling) returns fal-shaped output and the request id', async () => {
    const fal = falClient(emu);
    const updates: string[] = [];
    const result = await fal.subscribe(TURBO, {
      input: { prompt: 'a lighthouse', image_size: 'square', num_images: 2, seed: 7 },
      logs: true,
      pollInterval: 20,
      onQueueUpdate: (u) => updates.push(u.status),
    });
    assert.match(result.requestId, /^[0-9a-f-]{36}$/);
    const data = result.data as any;
    assert.equal(data.images.length, 2);
    for (const im of data.images) {
      assert.equal(im.width, 512);
      assert.equal(im.height, 512);
      assert.equal(im.content_type, 'image/png');
      assert.ok(im.url.startsWith(`${emu.url}/v3.fal.media/files/emulated/`));
    }
    assert.equal(data.seed, 7);
    assert.deepEqual(data.has_nsfw_concepts, [false, false]);
    assert.equal(data.prompt, 'a lighthouse');
    assert.equal(typeof data.timings.inference, 'number');
    assert.equal(updates.at(-1), 'COMPLETED');
  });

  test('subscribe (streaming) follows the SSE status stream to COMPLETED', async () => {
    const fal = falClient(emu);
    // Long enough that the stream is open before the job completes, even on a loaded machine.
    emu.armFault({ kind: 'latency', latency_ms: 600, prompt_contains: 'a fox' });
    const updates: string[] = [];
    const result = await fal.subscribe(LORA, {
      input: { prompt: 'a fox', image_size: 'landscape_16_9', loras: [{ path: 'owner/repo', scale: 0.5 }] },
      mode: 'streaming',
      logs: true,
      onQueueUpdate: (u) => updates.push(u.status),
    });
    const data = result.data as any;
    assert.equal(data.images[0].width, 1024);
    assert.equal(data.images[0].height, 576);
    assert.equal(updates.at(-1), 'COMPLETED');
    assert.ok(updates.includes('IN_PROGRESS') || updates.includes('IN_QUEUE'));
  });

  test('status stream is SSE framed and ends after COMPLETED', async () => {
    emu.armFault({ kind: 'latency', latency_ms: 600, prompt_contains: 'stream me' });
    const id = await rawSubmit(emu, TURBO, { prompt: 'stream me' });
    const res = await fetch(`${emu.url}/queue.fal.run/${appOf(TURBO)}/requests/${id}/status/stream?logs=0`, {
      headers: { authorization: 'Key k', accept: 'text/event-stream' },
    });
    assert.equal(res.status, 200);
    assert.ok(res.headers.get('content-type')?.startsWith('text/event-stream'));
    assert.equal(res.headers.get('x-fal-request-id'), id);
    const text = await res.text();
    const events = text
      .split('\n\n')
      .filter((b) => b.startsWith('data: '))
      .map((b) => JSON.parse(b.slice(6)));
    assert.ok(events.length >= 2);
    assert.equal(events.at(-1).status, 'COMPLETED');
    assert.equal(events.at(-1).logs, null);
  });

  test('submit / status / result, with the path dropped for status and result', async () => {
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(LORA, { input: { prompt: 'queued', num_images: 1 } });
    const first = await fal.queue.status(LORA, { requestId: request_id, logs: true });
    assert.ok(['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED'].includes(first.status));
    const done = await waitFor(async () => {
      const s = await fal.queue.status(LORA, { requestId: request_id, logs: true });
      return s.status === 'COMPLETED' ? s : undefined;
    });
    assert.equal(typeof (done as any).metrics.inference_time, 'number');
    assert.ok(Array.isArray((done as any).logs));
    const result = await fal.queue.result(LORA, { requestId: request_id });
    assert.equal(result.requestId, request_id);
    assert.equal((result.data as any).images.length, 1);
  });

  test('the full endpoint path is accepted for request routes too', async () => {
    const id = await rawSubmit(emu, LORA, { prompt: 'full path' });
    const r = await raw(emu, 'GET', `queue.fal.run/${LORA}/requests/${id}/status`);
    assert.ok(r.status === 200 || r.status === 202);
    assert.equal(r.json.request_id, id);
  });

  test('a request id under another app is 404', async () => {
    const id = await rawSubmit(emu, TURBO, { prompt: 'other app' });
    const r = await raw(emu, 'GET', `queue.fal.run/fal-ai/flux/requests/${id}/status`);
    assert.equal(r.status, 404);
  });

  test('queued status carries queue_position; result before completion is 400 "still in progress"', async (t) => {
    const slow = await emulator(t, { latencyMs: 20000 });
    const a = await rawSubmit(slow, TURBO, { prompt: 'first' });
    const b = await rawSubmit(slow, TURBO, { prompt: 'second' });
    const s = await raw(slow, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${b}/status`);
    assert.equal(s.status, 202);
    assert.equal(s.json.status, 'IN_QUEUE');
    assert.equal(s.json.queue_position, 1);
    const r = await raw(slow, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${a}`);
    assert.equal(r.status, 400);
    assert.deepEqual(r.json, { detail: 'Request is still in progress' });
    assert.equal(r.headers.get('x-fal-request-id'), a);
  });

  test('cancel: 202 CANCELLATION_REQUESTED while running, then 400 ALREADY_COMPLETED; result is an error', async (t) => {
    const slow = await emulator(t, { latencyMs: 5000 });
    const fal = falClient(slow);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'to cancel' } });
    const first = await raw(slow, 'PUT', `queue.fal.run/${appOf(TURBO)}/requests/${request_id}/cancel`);
    assert.equal(first.status, 202);
    assert.deepEqual(first.json, { status: 'CANCELLATION_REQUESTED' });
    // The client's cancel() throws on 400, which is how fal answers a finished request.
    await assert.rejects(fal.queue.cancel(TURBO, { requestId: request_id }), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.status, 400);
      assert.deepEqual(err.body, { status: 'ALREADY_COMPLETED' });
      return true;
    });
    const status = await fal.queue.status(TURBO, { requestId: request_id });
    assert.equal(status.status, 'COMPLETED');
    await assert.rejects(fal.queue.result(TURBO, { requestId: request_id }), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.status, 400);
      return true;
    });
    assert.deepEqual(slow.billing(), []);
  });

  test('cancel of an unknown request is 404', async () => {
    const r = await raw(emu, 'PUT', `queue.fal.run/${appOf(TURBO)}/requests/00000000-0000-0000-0000-000000000000/cancel`);
    assert.equal(r.status, 404);
  });

  test('fal.run holds the connection and returns the output with headers', async () => {
    const fal = falClient(emu);
    const result = await fal.run(TURBO, { input: { prompt: 'sync run', image_size: 'portrait_4_3' } });
    assert.match(result.requestId, /^[0-9a-f-]{36}$/);
    const data = result.data as any;
    assert.equal(data.images[0].width, 768);
    assert.equal(data.images[0].height, 1024);
    const r = await raw(emu, 'POST', `fal.run/${TURBO}`, { body: { prompt: 'raw run' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-fal-billable-units'), '1');
    assert.ok(r.headers.get('x-fal-request-id'));
  });

  test('422 with pydantic-shaped detail becomes a ValidationError (kinder: submit_validation)', async (t) => {
    const fal = falClient(await emulator(t, { kinder: ['submit_validation'] }));
    await assert.rejects(
      fal.queue.submit(TURBO, { input: { num_images: 5, image_size: 'huge', seed: 'x' } as any }),
      (err: unknown) => {
        assert.ok(err instanceof ValidationError);
        assert.equal(err.status, 422);
        const locs = err.fieldErrors.map((e) => e.loc.join('.'));
        assert.deepEqual(locs.sort(), ['body.image_size', 'body.num_images', 'body.prompt', 'body.seed']);
        const n = err.getFieldErrors('num_images')[0]!;
        assert.equal(n.type, 'value_error.number.not_le');
        assert.equal(n.msg, 'ensure this value is less than or equal to 4');
        assert.equal(err.getFieldErrors('prompt')[0]!.type, 'value_error.missing');
        return true;
      },
    );
  });

  test('fal keeps looser rules than the gateway: long prompts and odd sizes pass', async () => {
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, {
      body: { prompt: 'x'.repeat(10000), image_size: { width: 100, height: 37 } },
    });
    assert.equal(r.status, 200);
    const bad = await raw(emu, 'POST', `fal.run/${LORA}`, {
      body: { prompt: 'p', loras: [{ scale: 5 }, { path: 'a' }, { path: 'b' }, { path: 'c' }] },
    });
    assert.equal(bad.status, 422);
    const locs = bad.json.detail.map((d: any) => d.loc.join('.')).sort();
    assert.deepEqual(locs, ['body.loras', 'body.loras.0.path', 'body.loras.0.scale']);
  });

  test('401 without a key (JSON detail), and the configured key is enforced', async (t) => {
    const fal = falClient(emu, null);
    await assert.rejects(fal.queue.submit(TURBO, { input: { prompt: 'no key' } }), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.status, 401);
      assert.equal(typeof (err.body as any).detail, 'string');
      return true;
    });
    const keyed = await emulator(t, { emulatorKey: 'sekret' });
    assert.equal((await raw(keyed, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' }, key: 'wrong' })).status, 401);
    assert.equal((await raw(keyed, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' }, key: 'sekret' })).status, 200);
    assert.equal((await raw(keyed, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt: 'p' }, key: null })).status, 401);
  });

  test('unknown endpoint id is 404', async () => {
    const fal = falClient(emu);
    await assert.rejects(fal.queue.submit('fal-ai/does-not/exist', { input: { prompt: 'p' } }), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.status, 404);
      return true;
    });
  });

  test('storage upload round trip: initiate, PUT without credentials, public GET', async () => {
    const fal = falClient(emu);
    const bytes = new Uint8Array([1, 2, 3, 4, 250, 251]);
    const url = await fal.storage.upload(new Blob([bytes], { type: 'application/x-test' }));
    assert.ok(url.startsWith(`${emu.url}/v3.fal.media/files/`));
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/x-test');
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), bytes);
    // Blobs in an input are uploaded by the client and replaced by their URL.
    const { request_id } = await fal.queue.submit(LORA, {
      input: { prompt: 'with file', loras: [{ path: new Blob(['weights'], { type: 'application/octet-stream' }) as any }] },
    });
    const job = emu.job(request_id)!;
    const path = (job.input.loras as any[])[0].path as string;
    assert.ok(path.startsWith(`${emu.url}/v3.fal.media/files/`));
    assert.equal(await (await fetch(path)).text(), 'weights');
  });

  test('x-fal-target-url (fal proxy convention) routes any path', async () => {
    const r = await fetch(`${emu.url}/api/fal/proxy`, {
      method: 'POST',
      headers: {
        'x-fal-target-url': `https://queue.fal.run/${TURBO}`,
        authorization: 'Key k',
        'content-type': 'application/json',
      },
      body: JSON.stringify({ prompt: 'via proxy' }),
    });
    assert.equal(r.status, 200);
    const body = (await r.json()) as any;
    assert.equal(emu.job(body.request_id)?.input.prompt, 'via proxy');
  });

  test('image URLs survive a redirecting fetch (self-prefixed paths are stripped)', async () => {
    const id = await rawSubmit(emu, TURBO, { prompt: 'selfie', image_size: { width: 64, height: 48 } });
    await waitFor(() => emu.job(id)?.status === 'COMPLETED' || undefined);
    const r = await raw(emu, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${id}`);
    const url = r.json.images[0].url as string;
    const viaRedirect = await fetch(`${emu.url}/${new URL(url).host}${new URL(url).pathname}`);
    assert.equal(viaRedirect.status, 200);
    assert.equal(viaRedirect.headers.get('content-type'), 'image/png');
  });

  test('admin: health, jobs, stats', async () => {
    const h = await raw(emu, 'GET', '_emulator/health', { key: null });
    assert.equal(h.status, 200);
    assert.equal(h.json.status, 'ok');
    assert.deepEqual([h.json.concurrency, h.json.media_ttl_s, h.json.kinder], [10, 3600, []], 'the real-fal defaults');
    assert.equal(typeof h.json.running, 'number');
    const jobs = await raw(emu, 'GET', '_emulator/jobs', { key: null });
    assert.ok(jobs.json.jobs.length > 0);
    // Every job made since start, beyond the ones still held.
    assert.equal(h.json.jobs, jobs.json.jobs.length);
    assert.ok(h.json.jobs_created >= h.json.jobs, `${h.json.jobs_created} created, ${h.json.jobs} held`);
    const stats = await raw(emu, 'GET', '_emulator/stats', { key: null });
    assert.ok(stats.json.calls.submit > 0);
  });
});
