import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ceil, dec, decToString, fraction, mul } from '../../src/emulator/decimal.js';
import { loadPriceTable, DEFAULT_PRICES_FILE } from '../../src/emulator/index.js';
import { priceJob, parsePriceTable } from '../../src/emulator/pricing.js';
import { appOf, emulator, LORA, raw, rawSubmit, TURBO, waitFor } from './helpers.js';

describe('exact decimals', () => {
  test('fractions, ceilings and canonical strings', () => {
    assert.equal(decToString(fraction(786432n, 1048576n)), '0.75');
    assert.equal(decToString(fraction(1000000n, 1048576n)), '0.95367431640625');
    assert.equal(decToString(fraction(1n, 3n)), '0.33333333333333333333');
    assert.equal(decToString(ceil(fraction(1049600n, 1048576n))), '2');
    assert.equal(decToString(mul(dec('0.0085'), dec('3'))), '0.0255');
    assert.equal(decToString(dec('0.500')), '0.5');
    assert.equal(decToString(dec('0')), '0');
  });
});

describe('price rules', () => {
  const table = parsePriceTable({
    prompt_expansion_usd: '0.0025',
    endpoints: {
      mp: { unit: 'megapixel', usd_per_unit: '0.025', megapixel_pixels: 1000000, rounding: 'ceil_per_request' },
      img: { unit: 'image', usd_per_unit: '0.04', prompt_expansion_usd: '0.01' },
      req: { unit: 'request', usd_per_unit: '0.1' },
    },
  });
  const cases = [
    { key: 'mp', images: [{ width: 1024, height: 1024 }], expansion: false, units: '2', usd: '0.05' },
    { key: 'mp', images: [{ width: 1000, height: 500 }, { width: 1000, height: 500 }], expansion: false, units: '1', usd: '0.025' },
    { key: 'img', images: [{ width: 1, height: 1 }, { width: 1, height: 1 }, { width: 1, height: 1 }], expansion: true, units: '3', usd: '0.13' },
    { key: 'req', images: [{ width: 9, height: 9 }, { width: 9, height: 9 }], expansion: true, units: '1', usd: '0.1025' },
  ];
  for (const c of cases) {
    test(`${c.key}: ${c.images.length} image(s), expansion ${c.expansion}`, () => {
      const charge = priceJob(table, c.key, { images: c.images, promptExpansion: c.expansion });
      assert.equal(charge.units, c.units);
      assert.equal(charge.usd, c.usd);
    });
  }

  test('the shipped table prices every served endpoint and rejects bad entries', () => {
    const shipped = loadPriceTable(DEFAULT_PRICES_FILE);
    assert.equal(shipped.endpoints[TURBO]?.usd_per_unit, '0.005');
    assert.equal(shipped.endpoints[LORA]?.usd_per_unit, '0.0085');
    assert.throws(() => parsePriceTable({ endpoints: { x: { unit: 'megapixel', usd_per_unit: 0.005 } } }), /decimal string/);
  });
});

describe('billing log', () => {
  const cases = [
    { endpoint: TURBO, input: { image_size: 'square_hd' }, units: '1', usd: '0.005' },
    { endpoint: TURBO, input: { image_size: 'landscape_4_3', num_images: 3 }, units: '3', usd: '0.015' },
    { endpoint: TURBO, input: { image_size: { width: 2048, height: 2048 }, num_images: 2 }, units: '8', usd: '0.04' },
    { endpoint: TURBO, input: { image_size: { width: 1056, height: 1024 } }, units: '2', usd: '0.01' },
    { endpoint: TURBO, input: { image_size: 'square', enable_prompt_expansion: true }, units: '1', usd: '0.0075' },
    { endpoint: LORA, input: { image_size: 'square_hd', num_images: 2 }, units: '2', usd: '0.017' },
    { endpoint: LORA, input: { image_size: 'portrait_16_9', num_images: 4 }, units: '4', usd: '0.034' },
    { endpoint: LORA, input: { image_size: 'landscape_16_9', enable_prompt_expansion: true }, units: '1', usd: '0.011' },
  ];

  test('one entry per completed job, exact decimal strings, matching x-fal-billable-units', async (t) => {
    const emu = await emulator(t, { imageMode: 'cheap' });
    const ids = await Promise.all(cases.map((c) => rawSubmit(emu, c.endpoint, { prompt: 'bill me', ...c.input })));
    await waitFor(() => (emu.billing().length === cases.length ? true : undefined));
    const byId = new Map(emu.billing().map((e) => [e.request_id, e]));
    for (const [i, c] of cases.entries()) {
      const entry = byId.get(ids[i]!)!;
      assert.equal(entry.endpoint, c.endpoint);
      assert.equal(entry.units, c.units, `${JSON.stringify(c.input)} units`);
      assert.equal(entry.usd, c.usd, `${JSON.stringify(c.input)} usd`);
      const r = await raw(emu, 'GET', `queue.fal.run/${appOf(c.endpoint)}/requests/${ids[i]}`);
      assert.equal(r.headers.get('x-fal-billable-units'), c.units);
    }
    const admin = await raw(emu, 'GET', '_emulator/billing', { key: null });
    assert.equal(admin.json.entries.length, cases.length);
    assert.equal(admin.json.total_usd, '0.1395');
    assert.equal(emu.billingTotal(), '0.1395');
  });

  test('failed and cancelled jobs bill nothing', async (t) => {
    const emu = await emulator(t);
    emu.armFault([
      { kind: 'fail_after_start', prompt_contains: 'fail' },
      { kind: 'latency', latency_ms: 60000, prompt_contains: 'cancel' },
    ]);
    const failed = await rawSubmit(emu, TURBO, { prompt: 'fail' });
    const cancelled = await rawSubmit(emu, TURBO, { prompt: 'cancel' });
    assert.equal((await raw(emu, 'PUT', `queue.fal.run/${appOf(TURBO)}/requests/${cancelled}/cancel`)).status, 202);
    await waitFor(() => (emu.job(failed)!.status === 'COMPLETED' ? true : undefined));
    assert.deepEqual(emu.billing(), []);
    for (const id of [failed, cancelled]) {
      const r = await raw(emu, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${id}`);
      assert.ok(r.status >= 400);
      assert.equal(r.headers.get('x-fal-billable-units'), '0');
    }
  });

  test('the price table can be changed at runtime (to disagree with the gateway) and reset restores it', async (t) => {
    const emu = await emulator(t, { imageMode: 'cheap' });
    const merged = await raw(emu, 'POST', '_emulator/prices?merge=1', {
      key: null,
      body: { endpoints: { [TURBO]: { unit: 'megapixel', usd_per_unit: '0.006', megapixel_pixels: 1048576, rounding: 'none' } } },
    });
    assert.equal(merged.status, 200);
    assert.equal(merged.json.endpoints[LORA].usd_per_unit, '0.0085');
    const id = await rawSubmit(emu, TURBO, { prompt: 'p', image_size: 'landscape_4_3' });
    await waitFor(() => emu.billing()[0]);
    assert.equal(emu.billing()[0]!.units, '0.75');
    assert.equal(emu.billing()[0]!.usd, '0.0045');
    const r = await raw(emu, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${id}`);
    assert.equal(r.headers.get('x-fal-billable-units'), '0.75');

    // A full replacement must still price every served endpoint.
    const partial = await raw(emu, 'POST', '_emulator/prices', { key: null, body: { endpoints: {} } });
    assert.equal(partial.status, 400);
    assert.match(partial.json.detail, /no entry for/);

    emu.setPrices({ endpoints: { [TURBO]: { unit: 'image', usd_per_unit: '1' } } }, { merge: true });
    assert.equal(emu.prices().endpoints[TURBO]?.unit, 'image');
    assert.equal((await raw(emu, 'POST', '_emulator/reset', { key: null })).status, 200);
    assert.equal(emu.prices().endpoints[TURBO]?.usd_per_unit, '0.005');
    assert.deepEqual(emu.billing(), []);
    assert.deepEqual(emu.jobs(), []);
  });

  test('an emulator whose price table misses a served endpoint refuses to start', async () => {
    const { startEmulator } = await import('../../src/emulator/index.js');
    await assert.rejects(startEmulator({ port: 0, prices: { endpoints: {} } }), /no entry for/);
  });
});
