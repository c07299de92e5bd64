import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { readLedger } from '../helpers/billing-audit.js';
import { inputPng, openAiMask } from '../helpers/edit-images.js';

/**
 * Bad edit input is refused before anything reaches fal: each case is a 4xx
 * naming the field, no upload and no job at the emulator, nothing reserved
 * or charged in the ledger.
 */
const MAX = 64 * 1024;

type Part = [name: string, value: string | Blob, fileName?: string];

describe('POST /v1/images/edits refuses bad input before fal sees anything', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ EDIT_IMAGE_MAX_BYTES: String(MAX), MODEL_PRICES: '{"fal-ai/z-image/turbo/inpaint":"0.006"}' });
  });
  after(async () => {
    await t.close();
  });

  const png = async () => new Blob([await inputPng()], { type: 'image/png' });
  const mask = async (w?: number, h?: number) => new Blob([await openAiMask(w, h)], { type: 'image/png' });

  async function send(parts: Part[] | Record<string, unknown>): Promise<{ status: number; body: { error?: { param?: string | null; message?: string } } }> {
    let body: FormData | string;
    const headers: Record<string, string> = { authorization: `Bearer ${TEST_KEY}` };
    if (Array.isArray(parts)) {
      body = new FormData();
      for (const [name, value, fileName] of parts) {
        if (typeof value === 'string') body.append(name, value);
        else body.append(name, value, fileName ?? 'f.png');
      }
    } else {
      body = JSON.stringify(parts);
      headers['content-type'] = 'application/json';
    }
    const res = await fetch(`${t.url}/v1/images/edits`, { method: 'POST', headers, body });
    return { status: res.status, body: (await res.json()) as { error?: { param?: string | null } } };
  }

  const base: Part[] = [['model', 'alibaba/z-image-turbo'], ['prompt', 'edit it']];
  const cases: Array<[string, () => Promise<Part[] | Record<string, unknown>>, number, string]> = [
    ['a missing image', async () => base, 400, 'image'],
    ['bytes that are no image', async () => [...base, ['image', new Blob(['hello, not an image'], { type: 'image/png' })]], 400, 'image'],
    ['a file over EDIT_IMAGE_MAX_BYTES', async () => [...base, ['image', new Blob([Buffer.alloc(MAX + 1, 7)], { type: 'image/png' })]], 413, 'image'],
    ['a mask of another size', async () => [...base, ['image', await png()], ['mask', await mask(128, 128)]], 400, 'mask'],
    ['a mask without transparency', async () => [...base, ['image', await png()], ['mask', await png()]], 400, 'mask'],
    ['a mask on a model without inpainting', async () => [['model', 'alibaba/z-image-turbo-lora'], ['prompt', 'x'], ['image', await png()], ['mask', await mask()]], 400, 'mask'],
    ['an edit of a model without edits', async () => [['model', 'flux/dev'], ['prompt', 'x'], ['image', await png()]], 400, 'model'],
    ['two images (image[] twice)', async () => [...base, ['image[]', await png()], ['image[]', await png()]], 400, 'image'],
    ['a file under another name', async () => [...base, ['image', await png()], ['picture', await png()]], 400, 'picture'],
    ['a URL to a loopback address', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: 'https://127.0.0.1/cat.png' }), 400, 'image_url'],
    ['a URL whose name resolves to loopback', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: 'https://localhost/cat.png' }), 400, 'image_url'],
    ['a URL to the metadata service', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: 'https://169.254.169.254/latest' }), 400, 'image_url'],
    ['image_url sent as null', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: null }), 400, 'image_url'],
    ['a plain http URL', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: 'http://example.com/cat.png' }), 400, 'image_url'],
    ['a mask URL to a private address', async () => ({ model: 'alibaba/z-image-turbo', prompt: 'x', image_url: 'https://93.184.215.14/a.png', mask_url: 'https://10.0.0.8/m.png' }), 400, 'mask_url'],
    ['an image both as a file and as image_url', async () => [...base, ['image_url', 'https://93.184.215.14/a.png'], ['image', await png()]], 400, 'image'],
  ];

  for (const [name, build, status, param] of cases) {
    it(`${name}: ${status} naming ${param}`, async () => {
      const before = t.emulator.stats();
      const res = await send(await build());
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal(res.body.error?.param, param, JSON.stringify(res.body));
      const after = t.emulator.stats();
      assert.equal(after['upload'], before['upload'], 'nothing uploaded to fal');
      assert.equal(after['submit'], before['submit'], 'no job submitted');
    });
  }

  it('left nothing billed, reserved or charged', async () => {
    assert.deepEqual(t.emulator.billing(), []);
    assert.equal(t.emulator.jobs().length, 0);
    const ledger = await readLedger(t.service.database.db);
    assert.equal(ledger.requests.length, 0);
    assert.equal(ledger.jobs.length, 0);
  });
});
