import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { emulator, falClient, raw, receiver, TURBO, waitFor, type Delivery } from './helpers.js';

/** fal's documented verification: ED25519 over id \n user \n timestamp \n sha256hex(body), any JWKS key. */
function verifyDelivery(jwks: { keys: Array<{ x: string }> }, d: Delivery, body: Buffer = d.body): boolean {
  const h = (n: string) => String(d.headers[n] ?? '');
  const ts = Number(h('x-fal-webhook-timestamp'));
  if (!Number.isInteger(ts) || Math.abs(Date.now() / 1000 - ts) > 300) return false;
  const message = Buffer.from(
    [h('x-fal-webhook-request-id'), h('x-fal-webhook-user-id'), h('x-fal-webhook-timestamp'), createHash('sha256').update(body).digest('hex')].join('\n'),
  );
  const signature = Buffer.from(h('x-fal-webhook-signature'), 'hex');
  return jwks.keys.some((k) => {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: k.x }, format: 'jwk' });
    return verify(null, message, key, signature);
  });
}

describe('webhooks', () => {
  test('delivered in fal shape, signed, verifiable with the JWKS; a forged signature fails', async (t) => {
    const emu = await emulator(t);
    const hook = await receiver(t);
    const fal = falClient(emu);
    const { request_id } = await fal.queue.submit(TURBO, { input: { prompt: 'hooked', num_images: 2 }, webhookUrl: hook.url });
    assert.equal(emu.job(request_id)!.webhook?.url, hook.url);
    await waitFor(() => hook.deliveries[0]);
    const d = hook.deliveries[0]!;
    const body = JSON.parse(d.body.toString());
    assert.equal(body.request_id, request_id);
    assert.equal(body.gateway_request_id, request_id);
    assert.equal(body.status, 'OK');
    assert.equal(body.payload.images.length, 2);
    assert.equal(d.headers['content-type'], 'application/json');
    assert.equal(d.headers['x-fal-webhook-request-id'], request_id);
    assert.equal(d.headers['x-fal-webhook-user-id'], 'emulator-user');
    assert.match(String(d.headers['x-fal-webhook-signature']), /^[0-9a-f]{128}$/);

    // The JWKS at fal's own address (host-prefixed) and at the admin alias.
    const jwks = (await raw(emu, 'GET', 'rest.fal.ai/.well-known/jwks.json', { key: null })).json;
    assert.deepEqual((await raw(emu, 'GET', '_emulator/jwks.json', { key: null })).json, jwks);
    assert.equal(jwks.keys[0].kty, 'OKP');
    assert.equal(jwks.keys[0].crv, 'Ed25519');
    assert.ok(verifyDelivery(jwks, d));

    // Forgeries: a changed body, a changed signature, another key.
    assert.equal(verifyDelivery(jwks, d, Buffer.from(d.body.toString().replace('OK', 'ER'))), false);
    const flipped = String(d.headers['x-fal-webhook-signature']).replace(/^./, (c) => (c === '0' ? '1' : '0'));
    assert.equal(verifyDelivery(jwks, { ...d, headers: { ...d.headers, 'x-fal-webhook-signature': flipped } }), false);
    const other = await emulator(t);
    assert.equal(verifyDelivery(other.jwks(), d), false);

    await waitFor(() => (emu.job(request_id)!.webhook?.state === 'delivered' ? true : undefined));
  });

  test('retried with backoff after receiver failures', async (t) => {
    const emu = await emulator(t, { webhookRetry: { baseDelayMs: 20, attempts: 5 } });
    const hook = await receiver(t, 2);
    const id = (await raw(emu, 'POST', `queue.fal.run/${TURBO}?fal_webhook=${encodeURIComponent(hook.url)}`, { body: { prompt: 'retry me' } })).json
      .request_id as string;
    await waitFor(() => hook.deliveries[0]);
    assert.equal(hook.attempts(), 3);
    const log = await waitFor(() => (emu.webhookDeliveries().length === 3 ? emu.webhookDeliveries() : undefined));
    assert.deepEqual(
      log.map((e) => [e.attempt, e.status, e.ok]),
      [
        [1, 500, false],
        [2, 500, false],
        [3, 200, true],
      ],
    );
    // Every attempt is signed afresh and verifies.
    assert.ok(verifyDelivery(emu.jwks(), hook.deliveries[0]!));
    await waitFor(() => (emu.job(id)!.webhook?.state === 'delivered' ? true : undefined));
    assert.equal(emu.job(id)!.webhook?.attempts, 3);
  });

  test('gives up after the configured attempts', async (t) => {
    const emu = await emulator(t, { webhookRetry: { baseDelayMs: 5, attempts: 3 } });
    const hook = await receiver(t, 100);
    const id = (await raw(emu, 'POST', `queue.fal.run/${TURBO}?fal_webhook=${encodeURIComponent(hook.url)}`, { body: { prompt: 'p' } })).json.request_id;
    await waitFor(() => (emu.job(id)!.webhook?.state === 'failed' ? true : undefined));
    assert.equal(hook.attempts(), 3);
  });

  test('a failed job is delivered with status ERROR and the error payload', async (t) => {
    const emu = await emulator(t);
    const hook = await receiver(t);
    emu.armFault({ kind: 'fail_after_start', status: 500, detail: 'boom' });
    const id = (await raw(emu, 'POST', `queue.fal.run/${TURBO}?fal_webhook=${encodeURIComponent(hook.url)}`, { body: { prompt: 'p' } })).json.request_id;
    await waitFor(() => hook.deliveries[0]);
    const body = JSON.parse(hook.deliveries[0]!.body.toString());
    assert.deepEqual(body, {
      request_id: id,
      gateway_request_id: id,
      status: 'ERROR',
      error: 'Invalid status code: 500',
      payload: { detail: 'boom' },
    });
  });

  test('an invalid fal_webhook is rejected at submit', async (t) => {
    const emu = await emulator(t);
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}?fal_webhook=not-a-url`, { body: { prompt: 'p' } });
    assert.equal(r.status, 400);
    assert.equal(emu.jobs().length, 0);
  });
});
