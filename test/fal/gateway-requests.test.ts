import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError } from '../../src/fal/gateway.js';

/**
 * The status poll and the submit, as they reach fal: the client's URLs,
 * headers and body, and its reading of the answer (both are made by
 * `@fal-ai/client` through the call's own fetch, src/fal/fal-call.ts).
 */
describe('fal status poll and submit', () => {
  let emu: Emulator;
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 60_000, imageMode: 'cheap' });
  });
  after(async () => {
    await emu.close();
  });

  it('the client\'s URLs: owner/alias only for a status, the whole endpoint id and fal_webhook for a submit', async () => {
    const sent: string[] = [];
    const fal = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      fetchImpl: (input, init) => {
        sent.push(String(input));
        return fetch(input as string, init);
      },
    });
    const { falRequestId } = await fal.submit('fal-ai/z-image/turbo/lora', { prompt: 'a kite', loras: [] }, { webhookUrl: 'https://gw.example.com/v1/fal/webhook?a=1&b=2' });
    assert.equal(sent.length, 1);
    assert.ok(
      sent[0]!.endsWith('/queue.fal.run/fal-ai/z-image/turbo/lora?fal_webhook=https%3A%2F%2Fgw.example.com%2Fv1%2Ffal%2Fwebhook%3Fa%3D1%26b%3D2'),
      sent[0],
    );
    await fal.status('fal-ai/z-image/turbo/lora', falRequestId);
    assert.ok(sent[1]!.endsWith(`/queue.fal.run/fal-ai/z-image/requests/${falRequestId}/status?logs=0`), sent[1]);
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
