import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError, statusUrl, submitUrl } from '../../src/fal/gateway.js';

/**
 * The status poll and the submit go to fal without the client's request
 * machinery (one is made over and over while jobs wait, the other by every
 * request): each must be the request the client would have made, and read
 * the answer as the client would have.
 */
describe('fal status poll and submit', () => {
  let emu: Emulator;
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 60_000, imageMode: 'cheap' });
  });
  after(async () => {
    await emu.close();
  });

  it('builds the client\'s URL: owner/alias only, then the request id', () => {
    assert.equal(statusUrl('fal-ai/z-image/turbo', 'abc'), 'https://queue.fal.run/fal-ai/z-image/requests/abc/status?logs=0');
    assert.equal(statusUrl('fal-ai/z-image/turbo/lora', 'abc'), 'https://queue.fal.run/fal-ai/z-image/requests/abc/status?logs=0');
    assert.equal(statusUrl('fal-ai/flux/dev', 'a b'), 'https://queue.fal.run/fal-ai/flux/requests/a%20b/status?logs=0');
    assert.equal(statusUrl('workflows/me/flow/x', 'i'), 'https://queue.fal.run/workflows/me/flow/requests/i/status?logs=0', 'a namespace keeps three parts');
  });

  it('sends the key and the client\'s headers, and reads the job\'s status', async () => {
    const sent: Array<{ url: string; headers: Record<string, string> }> = [];
    const fal = createFalGateway({
      credentials: 'key-id:secret',
      baseUrl: emu.url,
      fetchImpl: (input, init) => {
        sent.push({ url: String(input), headers: Object.fromEntries(new Headers(init?.headers as Record<string, string>)) });
        return fetch(input as string, init);
      },
    });
    const { falRequestId } = await fal.submit('fal-ai/z-image/turbo/lora', { prompt: 'a kite', loras: [] });
    sent.length = 0;
    const st = await fal.status('fal-ai/z-image/turbo/lora', falRequestId);
    assert.ok(st.status === 'IN_QUEUE' || st.status === 'IN_PROGRESS', st.status);
    assert.equal(sent.length, 1);
    assert.match(sent[0]!.url, new RegExp(`/fal-ai/z-image/requests/${falRequestId}/status\\?logs=0$`));
    assert.equal(sent[0]!.headers.authorization, 'Key key-id:secret');
    assert.equal(sent[0]!.headers.accept, 'application/json');
    assert.match(sent[0]!.headers['user-agent'] ?? '', /^@fal-ai\/client\/\d+\.\d+\.\d+/);
    assert.equal(fal.stats.statusCalls, 1);
  });

  it('an unknown job is fal\'s 404 as a FalCallError, body and all', async () => {
    const fal = createFalGateway({ credentials: 'k:s', baseUrl: emu.url });
    const err = await fal.status('fal-ai/z-image/turbo', 'no-such-job').then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.kind, 'http');
    assert.equal(err.status, 404);
    assert.equal(err.phase, 'status');
    assert.ok(err.body && typeof err.body === 'object', 'the JSON body is kept');
  });

  it('submit: the whole endpoint id, fal_webhook when given, the client\'s headers and the input as JSON', async () => {
    assert.equal(submitUrl('fal-ai/z-image/turbo/lora', undefined), 'https://queue.fal.run/fal-ai/z-image/turbo/lora');
    assert.equal(submitUrl('fal-ai/flux/dev', 'https://gw.example.com/v1/fal/webhook?a=1&b=2'), 'https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fgw.example.com%2Fv1%2Ffal%2Fwebhook%3Fa%3D1%26b%3D2');
    const sent: Array<{ url: string; method?: string; headers: Record<string, string>; body: string }> = [];
    const fal = createFalGateway({
      credentials: 'key-id:secret',
      baseUrl: emu.url,
      fetchImpl: (input, init) => {
        sent.push({ url: String(input), method: init?.method, headers: Object.fromEntries(new Headers(init?.headers as Record<string, string>)), body: String(init?.body) });
        return fetch(input as string, init);
      },
    });
    const input = { prompt: 'a kite over dunes', num_images: 1, image_size: { width: 512, height: 512 } };
    const { falRequestId, strayIds } = await fal.submit('fal-ai/z-image/turbo', input, { webhookUrl: 'http://127.0.0.1:9/v1/fal/webhook' });
    assert.deepEqual(strayIds, []);
    assert.equal(sent.length, 1);
    assert.equal(sent[0]!.method, 'POST');
    assert.match(sent[0]!.url, /\/fal-ai\/z-image\/turbo\?fal_webhook=http%3A%2F%2F127\.0\.0\.1%3A9%2Fv1%2Ffal%2Fwebhook$/);
    assert.deepEqual(JSON.parse(sent[0]!.body), input);
    assert.equal(sent[0]!.headers.authorization, 'Key key-id:secret');
    assert.equal(sent[0]!.headers['content-type'], 'application/json');
    assert.equal(sent[0]!.headers['x-fal-queue-priority'], 'normal');
    assert.match(sent[0]!.headers['user-agent'] ?? '', /^@fal-ai\/client\//);
    // The emulator took it as the client's submit: the job exists with this input.
    const job = emu.job(falRequestId);
    assert.ok(job, 'the emulator knows the job');
    assert.equal((job as { input?: { prompt?: string } }).input?.prompt, 'a kite over dunes');
  });

  // Real fal mostly validates queue input on the runner, after queueing; this
  // test is about the submit-time 422 it can also answer, so it opts out by name.
  it('submit: fal refusing the input is its 422 as a FalCallError, body and all (emulator kinder: submit_validation)', async () => {
    const strict = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 60_000, imageMode: 'cheap', kinder: ['submit_validation'] });
    const fal = createFalGateway({ credentials: 'k:s', baseUrl: strict.url });
    const err = await fal.submit('fal-ai/z-image/turbo', { num_images: 1 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await strict.close();
    assert.ok(err instanceof FalCallError, String(err));
    assert.equal(err.phase, 'submit');
    assert.equal(err.kind, 'http');
    assert.ok(err.status === 422 || err.status === 400, `status ${err.status}`);
    assert.ok(err.body && typeof err.body === 'object');
  });
});
