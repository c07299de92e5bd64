import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createFalGateway, FalCallError } from '../../src/fal/gateway.js';

/**
 * fal's request listing read through the gateway (src/fal/request-listing.ts)
 * against the emulator's Platform API: every page, the key, the window, and
 * failures as FalCallError after the `listing` retries.
 */
describe('fal request listing', () => {
  let emu: Emulator;
  const ENDPOINT = 'fal-ai/z-image/turbo';
  before(async () => {
    emu = await startEmulator({ port: 0, host: '127.0.0.1', latencyMs: 60_000, imageMode: 'cheap' });
  });
  after(async () => {
    await emu.close();
  });

  it('reads every page of the window, each request with the input fal recorded, sending the key', async () => {
    const sent: Array<{ url: string; auth: string | null }> = [];
    const fal = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      fetchImpl: (input, init) => {
        sent.push({ url: String(input), auth: new Headers(init?.headers).get('authorization') });
        return fetch(input as string, init);
      },
    });
    const start = Date.now() - 1000;
    const ids = new Map<string, number>();
    for (let i = 0; i < 45; i++) ids.set((await fal.submit(ENDPOINT, { prompt: `listing ${i}`, seed: i })).falRequestId, i);
    const listed = await fal.listRequests(ENDPOINT, { start, end: Date.now() + 1000 });
    assert.equal(listed.length, 45);
    for (const r of listed) {
      const i = ids.get(r.requestId);
      assert.ok(i !== undefined, `${r.requestId} is one of ours`);
      assert.equal((r.input as { prompt: string }).prompt, `listing ${i}`);
      assert.ok(r.sentAtMs !== null && r.sentAtMs >= start);
    }
    const pages = sent.filter((s) => s.url.includes('/api.fal.ai/v1/models/requests/by-endpoint?'));
    assert.equal(pages.length, 3, 'three pages of 20');
    assert.ok(pages.every((p) => p.auth === 'Key k:s'));
    assert.ok(pages[0]!.url.includes('expand=payloads'));

    const before = await fal.listRequests(ENDPOINT, { start: start - 3_600_000, end: start });
    assert.equal(before.length, 0, 'nothing sent before the window');
  });

  it('a listing fal keeps failing is a FalCallError after the listing retries', async () => {
    let calls = 0;
    const fal = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      retry: { listing: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } },
      fetchImpl: async () => {
        calls++;
        return new Response('{"detail":"down"}', { status: 502, headers: { 'content-type': 'application/json' } });
      },
    });
    await assert.rejects(fal.listRequests(ENDPOINT, { start: 0, end: Date.now() }), (err: unknown) => err instanceof FalCallError && err.phase === 'listing' && err.status === 502);
    assert.equal(calls, 3);
  });

  it('a refusal (a key that may not list) is a FalCallError at once', async () => {
    const fal = createFalGateway({
      credentials: 'k:s',
      baseUrl: emu.url,
      fetchImpl: async () => new Response('{"detail":"Forbidden"}', { status: 403, headers: { 'content-type': 'application/json' } }),
    });
    await assert.rejects(fal.listRequests(ENDPOINT, { start: 0, end: Date.now() }), (err: unknown) => err instanceof FalCallError && err.kind === 'http' && err.status === 403);
  });
});
