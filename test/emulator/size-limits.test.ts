/**
 * The emulator refuses sizes beyond what its endpoints accept, as fal does:
 * a 422 in fal's validation shape on a call, and a 404 with nothing rendered
 * for a file URL no endpoint would have made (file tokens are unsigned, so
 * anyone can write one). Z-Image Turbo's published bound is 4 MP
 * (src/emulator/endpoints.ts cites fal's pages).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { imagePath, type RenderSpec } from '../../src/emulator/images.js';
import { DEFAULT_MAX_RENDER_PIXELS } from '../../src/emulator/emulator.js';
import { endpointTable, ENDPOINTS, largestImagePixels, Z_IMAGE_TURBO_MAX_PIXELS } from '../../src/emulator/endpoints.js';
import { validateInput } from '../../src/emulator/validate.js';
import { modelCatalog } from '../../src/models/catalog.js';
import { emulator, LORA, raw, TURBO } from './helpers.js';

const FOUR_MP = 2048 * 2048;

describe('emulator: image sizes beyond what the endpoint accepts', () => {
  test('Z-Image Turbo and its LoRA sibling declare fal’s 4 MP bound', () => {
    assert.equal(Z_IMAGE_TURBO_MAX_PIXELS, FOUR_MP);
    for (const id of [TURBO, LORA]) {
      const input = endpointTable().get(id)!.input;
      const cases: Array<[{ width: number; height: number }, boolean]> = [
        [{ width: 2048, height: 2048 }, true],
        [{ width: 4096, height: 1024 }, true],
        [{ width: 2048, height: 2049 }, false],
        [{ width: 4096, height: 4096 }, false],
      ];
      for (const [size, ok] of cases) {
        const out = validateInput(input, { prompt: 'p', image_size: size });
        assert.equal(out.ok, ok, `${id} ${size.width}x${size.height}`);
        if (!out.ok) {
          assert.deepEqual(out.errors, [
            { loc: ['body', 'image_size'], msg: `ensure width × height is less than or equal to ${FOUR_MP} pixels`, type: 'value_error.number.not_le', ctx: { limit_value: FOUR_MP } },
          ]);
        }
      }
    }
  });

  test('fal.run answers 422 with fal’s detail for 4096×4096 on both endpoints, and no job is made', async (t) => {
    const emu = await emulator(t);
    for (const id of [TURBO, LORA]) {
      const r = await raw(emu, 'POST', `fal.run/${id}`, { body: { prompt: 'too big', image_size: { width: 4096, height: 4096 } } });
      assert.equal(r.status, 422, id);
      assert.deepEqual(r.json.detail.map((d: any) => [d.loc.join('.'), d.type, d.ctx?.limit_value]), [['body.image_size', 'value_error.number.not_le', FOUR_MP]]);
    }
    assert.equal(emu.jobs().length, 0);
    assert.equal(emu.billing().length, 0);
  });

  test('a file URL for a size no endpoint makes is a 404; one within the bound renders', async (t) => {
    const emu = await emulator(t, { imageMode: 'cheap' });
    const url = (w: number, h: number) => imagePath({ kind: 'c', width: w, height: h, format: 'png' } as RenderSpec);
    assert.equal((await raw(emu, 'GET', url(4096, 4096), { key: null })).status, 404);
    assert.equal((await raw(emu, 'GET', url(2048, 2049), { key: null })).status, 404);
    const fits = await raw(emu, 'GET', url(64, 64), { key: null });
    assert.equal(fits.status, 200);
  });

  test('a raised render limit does not lift the endpoints’ bound on file URLs', async (t) => {
    const zOnly = ENDPOINTS.filter((e) => e.id === TURBO || e.id === LORA);
    assert.equal(largestImagePixels(zOnly), FOUR_MP);
    const emu = await emulator(t, { imageMode: 'cheap', endpoints: zOnly, maxRenderPixels: 8192 * 8192 });
    assert.equal((await raw(emu, 'GET', imagePath({ kind: 'c', width: 4096, height: 4096, format: 'png' } as RenderSpec), { key: null })).status, 404);
  });

  test('the service never asks any emulator endpoint for more than it accepts or renders', () => {
    const table = endpointTable();
    assert.equal(DEFAULT_MAX_RENDER_PIXELS, FOUR_MP);
    for (const model of modelCatalog) {
      const sizes = (model.requestSchema as any).properties.image_size.anyOf.find((s: any) => s.type === 'object').properties;
      const most = sizes.width.maximum * sizes.height.maximum;
      const endpoint = table.get(model.endpoint);
      assert.ok(endpoint, `${model.id}: the emulator serves ${model.endpoint}`);
      assert.ok(most <= largestImagePixels([endpoint]), `${model.id}: ${most} pixels within what ${model.endpoint} accepts`);
      assert.ok(most <= DEFAULT_MAX_RENDER_PIXELS, `${model.id}: ${most} pixels within the default render limit`);
      const check = validateInput(endpoint.input, { prompt: 'p', image_size: { width: sizes.width.maximum, height: sizes.height.maximum } });
      assert.equal(check.ok, true, `${model.id}: its largest size passes ${model.endpoint}'s rules`);
    }
  });
});
