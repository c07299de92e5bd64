import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { auditBilling, readLedger, type CallerAnswer } from '../helpers/billing-audit.js';
import { BLUE, H, RED, W, inputPng, maxDiff, openAiMask, pixelsOf } from '../helpers/edit-images.js';

/**
 * images.edit from the unchanged openai SDK (multipart, as it sends it)
 * against the service and the emulator: the answer is a generation's, the
 * pixels show the edit where it was asked for, and the ledger matches the
 * emulator's billing log job for job. Rows away from the EMULATED band (the
 * middle of the image) are compared.
 */
describe('openai SDK images.edit', () => {
  let t: TestService;
  let client: OpenAI;
  const answers: CallerAnswer[] = [];
  before(async () => {
    // The emulator's inpaint price is a placeholder; the service serves inpainting only when configured, at the same rate.
    t = await startTestService({ MODEL_PRICES: '{"fal-ai/z-image/turbo/inpaint":"0.006"}' });
    client = new OpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await t.close();
  });

  async function edit(params: Parameters<OpenAI['images']['edit']>[0]) {
    const { data, response } = await client.images.edit(params).withResponse();
    answers.push({ requestId: response.headers.get('x-request-id')!, status: response.status, costUsd: response.headers.get('x-usage-cost-usd') });
    return { res: data as OpenAI.ImagesResponse, headers: response.headers };
  }

  it('without a mask: image-to-image at the input size (b64_json), the whole image recoloured', async () => {
    const { res, headers } = await edit({
      model: 'alibaba/z-image-turbo',
      image: await toFile(await inputPng(), 'input.png', { type: 'image/png' }),
      prompt: 'make it warmer',
      response_format: 'b64_json',
    });
    assert.equal(res.data?.length, 1);
    const out = await pixelsOf(Buffer.from(res.data![0]!.b64_json!, 'base64'));
    assert.deepEqual([out.width, out.height], [W, H]);
    assert.ok(maxDiff(out, RED, 0, 0, W / 2, 20) > 25, 'left half recoloured (the tint has a channel at 255: 0.6 × 55 at least)');
    assert.ok(maxDiff(out, BLUE, W / 2, 0, W, 20) > 25, 'right half recoloured');
    assert.equal(headers.get('x-usage-cost-usd'), '0.005000');
    const meta = (res as unknown as { meta: { usage: { credits_used: number } } }).meta;
    assert.equal(meta.usage.credits_used, 10000);
  });

  it('with a mask (url): only the transparent area of the mask changes, the rest stays within a small tolerance', async () => {
    const { res } = await edit({
      model: 'alibaba/z-image-turbo',
      image: await toFile(await inputPng(), 'input.png', { type: 'image/png' }),
      mask: await toFile(await openAiMask(), 'mask.png', { type: 'image/png' }),
      prompt: 'repaint the left',
      n: 2,
    });
    assert.equal(res.data?.length, 2);
    for (const d of res.data!) {
      const download = await fetch(d.url!);
      assert.equal(download.status, 200);
      const out = await pixelsOf(Buffer.from(await download.arrayBuffer()));
      assert.deepEqual([out.width, out.height], [W, H]);
      assert.ok(maxDiff(out, RED, 0, 0, W / 2 - 2, 20) > 40, 'masked (left) area changed');
      assert.ok(maxDiff(out, BLUE, W / 2 + 2, 0, W, 20) <= 3, 'unmasked top right kept');
      assert.ok(maxDiff(out, BLUE, W / 2 + 2, H - 20, W, H) <= 3, 'unmasked bottom right kept');
    }
  });

  it('an explicit size is honoured and billed on the delivered pixels', async () => {
    const { res, headers } = await edit({
      model: 'alibaba/z-image-turbo',
      image: await toFile(await inputPng(), 'input.png', { type: 'image/png' }),
      prompt: 'bigger',
      size: '1536x1024',
      response_format: 'b64_json',
      output_format: 'jpeg',
    });
    const out = await pixelsOf(Buffer.from(res.data![0]!.b64_json!, 'base64'));
    assert.deepEqual([out.width, out.height], [1536, 1024]);
    assert.equal(headers.get('x-usage-cost-usd'), '0.010000');
  });

  it('the ledger equals the emulator billing log for these edits, and every answer is charged as it said', async () => {
    const ledger = await readLedger(t.service.database.db);
    const report = auditBilling(ledger, t.emulator.billing(), answers);
    assert.ok(report.clean, JSON.stringify(report, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
    assert.equal(report.totals.falBilledMicros, report.totals.ledgerUpstreamMicros);
    assert.equal(report.totals.billedJobs, 3);
    const endpoints = t.emulator.billing().map((b) => b.endpoint).sort();
    assert.deepEqual(endpoints, ['fal-ai/z-image/turbo/image-to-image', 'fal-ai/z-image/turbo/image-to-image', 'fal-ai/z-image/turbo/inpaint']);
  });
});
