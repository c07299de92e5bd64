import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { formatDecimal, parseMarkup } from '../../src/metering/money.js';
import {
  callerCharge,
  creditsFromMicros,
  imageUnits,
  maxCharge,
  upstreamCost,
  upstreamEstimate,
  validatePricing,
  type ImageDims,
  type ModelPricing,
  type PricedModel,
} from '../../src/metering/pricing.js';
import { defaultModels, zImageTurbo, zImageTurboLora } from '../../src/models/index.js';
import { IMAGE_SIZE_PRESET_PIXELS, IMAGE_SIZE_PRESETS } from '../../src/schemas/fields.js';

const x1 = parseMarkup('1');
const x105 = parseMarkup('1.05');
const x1333 = parseMarkup('1.333');
const px = (width: number, height: number): ImageDims => ({ width, height });

describe("aimlapi's published examples", () => {
  it('turbo, 1 MP, markup 1.05 → 10,500 credits', () => {
    assert.deepEqual(callerCharge(zImageTurbo, [px(1024, 1024)], false, x105), { micros: 5_250n, usd: '0.005250', credits: 10_500 });
  });
  it('lora, 1 MP, markup 1.05 → 17,850 credits', () => {
    assert.deepEqual(callerCharge(zImageTurboLora, [px(1024, 1024)], false, x105), { micros: 8_925n, usd: '0.008925', credits: 17_850 });
  });
});

describe('megapixel units, ceil per image (2^20 pixels)', () => {
  const cases: Array<[string, ImageDims, string]> = [
    ['512x512', px(512, 512), '1'],
    ['1024x1024 exactly 1 MP', px(1024, 1024), '1'],
    ['1024x1056 just over 1 MP', px(1024, 1056), '2'],
    ['1536x1024', px(1536, 1024), '2'],
    ['2048x2048', px(2048, 2048), '4'],
    ['2048x2016', px(2048, 2016), '4'],
    ['2048x512', px(2048, 512), '1'],
    ['1x1', px(1, 1), '1'],
  ];
  for (const [name, size, units] of cases) {
    it(`${name} → ${units} MP`, () => assert.equal(formatDecimal(imageUnits(zImageTurbo.pricing, size)), units));
  }
  it('refuses dimensions that are not positive integers', () => {
    for (const bad of [px(0, 10), px(10.5, 10), px(-1, 10), px(Number.NaN, 1)]) assert.throws(() => imageUnits(zImageTurbo.pricing, bad), RangeError);
  });
});

describe('caller charge for every preset (markup 1.0)', () => {
  // Every preset is at most 1 MP, so each image is one unit.
  for (const preset of IMAGE_SIZE_PRESETS) {
    const size = IMAGE_SIZE_PRESET_PIXELS[preset];
    it(`${preset} (${size.width}x${size.height}): turbo $0.005, lora $0.0085`, () => {
      assert.equal(callerCharge(zImageTurbo, [size], false, x1).usd, '0.005000');
      assert.equal(callerCharge(zImageTurboLora, [size], false, x1).usd, '0.008500');
    });
  }
});

describe('caller charge table', () => {
  const rows: Array<[string, PricedModel, ImageDims[], boolean, string, bigint, number]> = [
    // name, model, images returned, expansion, markup, micros, credits
    ['turbo 1 MP', zImageTurbo, [px(1024, 1024)], false, '1', 5_000n, 10_000],
    ['turbo 2 MP (1536x1024)', zImageTurbo, [px(1536, 1024)], false, '1', 10_000n, 20_000],
    ['turbo 4 MP (2048x2048)', zImageTurbo, [px(2048, 2048)], false, '1', 20_000n, 40_000],
    ['turbo 4 images of 1 MP', zImageTurbo, Array(4).fill(px(1024, 1024)), false, '1', 20_000n, 40_000],
    ['turbo mixed sizes', zImageTurbo, [px(512, 512), px(2048, 2048)], false, '1', 25_000n, 50_000],
    ['turbo with expansion', zImageTurbo, [px(1024, 768)], true, '1', 7_500n, 15_000],
    ['turbo 3 images with expansion (fee once)', zImageTurbo, Array(3).fill(px(1024, 768)), true, '1', 17_500n, 35_000],
    ['turbo 1.05', zImageTurbo, [px(1024, 768)], false, '1.05', 5_250n, 10_500],
    ['turbo expansion 1.05', zImageTurbo, [px(1024, 768)], true, '1.05', 7_875n, 15_750],
    ['turbo 1.333', zImageTurbo, [px(1024, 768)], false, '1.333', 6_665n, 13_330],
    ['turbo 2 images 1.333 with expansion', zImageTurbo, Array(2).fill(px(1024, 768)), true, '1.333', 16_663n, 33_326], // 12500 × 1.333 = 16662.5 → up
    ['lora 1 MP', zImageTurboLora, [px(1024, 1024)], false, '1', 8_500n, 17_000],
    ['lora 2 MP', zImageTurboLora, [px(1536, 1024)], false, '1', 17_000n, 34_000],
    ['lora 4 images 1.05', zImageTurboLora, Array(4).fill(px(576, 1024)), false, '1.05', 35_700n, 71_400],
    ['lora 1.333 rounds up', zImageTurboLora, [px(1024, 1024)], false, '1.333', 11_331n, 22_662], // 11330.5
    ['lora with expansion 1.333', zImageTurboLora, [px(1024, 1024)], true, '1.333', 14_663n, 29_326], // 11000 × 1.333 = 14663
    ['no images returned: nothing billed', zImageTurbo, [], true, '1.05', 0n, 0],
  ];
  for (const [name, model, images, expansion, markup, micros, credits] of rows) {
    it(name, () => {
      const c = callerCharge(model, images, expansion, parseMarkup(markup));
      assert.equal(c.micros, micros);
      assert.equal(c.credits, credits);
      assert.equal(c.usd, `${micros / 1_000_000n}.${(micros % 1_000_000n).toString().padStart(6, '0')}`);
    });
  }
});

describe('other price rules (data, so more models fit)', () => {
  const model = (pricing: ModelPricing): PricedModel => {
    validatePricing(pricing);
    return { pricing };
  };
  const exactMp = model({ unit: 'megapixel', rateUsd: '0.005', megapixelPixels: 1_048_576, rounding: 'exact', promptExpansionUsd: '0.0025' });
  const decimalMp = model({ unit: 'megapixel', rateUsd: '0.025', megapixelPixels: 1_000_000, rounding: 'ceil_per_image' });
  const perImage = model({ unit: 'image', rateUsd: '0.03' });
  const perRequest = model({ unit: 'request', rateUsd: '0.01', promptExpansionUsd: '0.0025' });

  it('exact megapixels: 1024x768 is 0.75 MP', () => {
    assert.equal(formatDecimal(imageUnits(exactMp.pricing, px(1024, 768))), '0.75');
    assert.equal(callerCharge(exactMp, [px(1024, 768)], false, x1).micros, 3_750n);
  });
  it('exact megapixels round once, up, at the end', () => {
    // 1000x1000 = 0.95367431640625 MP × $0.005 = $0.00476837158203125
    assert.equal(callerCharge(exactMp, [px(1000, 1000)], false, x1).micros, 4_769n);
    assert.equal(callerCharge(exactMp, [px(1000, 1000), px(1000, 1000)], false, x1).micros, 9_537n);
  });
  it('10^6-pixel megapixels: 1024x1024 is 2 MP', () => {
    assert.equal(formatDecimal(imageUnits(decimalMp.pricing, px(1024, 1024))), '2');
    assert.equal(callerCharge(decimalMp, [px(1000, 1000)], false, x1).micros, 25_000n);
  });
  it('per image ignores size', () => {
    assert.equal(callerCharge(perImage, [px(512, 512), px(2048, 2048)], false, x105).micros, 63_000n);
  });
  it('per request: once per job, not per image', () => {
    assert.equal(callerCharge(perRequest, [px(512, 512), px(512, 512)], true, x1).micros, 12_500n);
    assert.equal(upstreamEstimate(perRequest, [], false).units, '1');
  });
  it('expansion on a model without an expansion price is an error, never free', () => {
    assert.throws(() => callerCharge(perImage, [px(512, 512)], true, x1), /no promptExpansionUsd/);
  });
  it('rates finer than a micro-dollar are kept exact', () => {
    const fine = model({ unit: 'image', rateUsd: '0.0000125' });
    assert.equal(callerCharge(fine, Array(3).fill(px(1, 1)), false, x1).micros, 38n); // 37.5 → 38
  });
});

describe('maxCharge (the reservation)', () => {
  const rows: Array<[string, PricedModel, number, ImageDims, boolean, string, bigint]> = [
    ['turbo 1 × default size', zImageTurbo, 1, px(1024, 768), false, '1', 5_000n],
    ['turbo 4 × 2048x2048', zImageTurbo, 4, px(2048, 2048), false, '1', 80_000n],
    ['turbo 4 × 2048x2048 expansion 1.05', zImageTurbo, 4, px(2048, 2048), true, '1.05', 86_625n],
    ['lora 3 × 1 MP 1.333', zImageTurboLora, 3, px(1024, 1024), false, '1.333', 33_992n], // 25500 × 1.333 = 33991.5
  ];
  for (const [name, model, numImages, size, promptExpansion, markup, micros] of rows) {
    it(name, () => assert.equal(maxCharge({ model, numImages, size, promptExpansion }, parseMarkup(markup)), micros));
  }
  it('is never below the charge for what can come back', () => {
    for (const model of defaultModels) {
      for (const preset of IMAGE_SIZE_PRESETS) {
        const size = IMAGE_SIZE_PRESET_PIXELS[preset];
        for (let n = 1; n <= 4; n++) {
          // Expansion where the model offers it: the dearest request it can get.
          const promptExpansion = model.pricing.promptExpansionUsd !== undefined;
          const max = maxCharge({ model, numImages: n, size, promptExpansion }, x1333);
          for (let got = 0; got <= n; got++) assert.ok(callerCharge(model, Array(got).fill(size), promptExpansion, x1333).micros <= max);
        }
      }
    }
  });
  it('refuses a non-positive image count', () => {
    assert.throws(() => maxCharge({ model: zImageTurbo, numImages: 0, size: px(512, 512), promptExpansion: false }, x1), RangeError);
  });
});

describe('upstreamEstimate (what fal bills us, no markup)', () => {
  const rows: Array<[string, PricedModel, ImageDims[], boolean, string, bigint]> = [
    ['turbo 1 MP', zImageTurbo, [px(1024, 1024)], false, '1', 5_000n],
    ['turbo 2 × 2 MP', zImageTurbo, [px(1536, 1024), px(1024, 1536)], false, '4', 20_000n],
    ['turbo with expansion', zImageTurbo, [px(1024, 768)], true, '1', 7_500n],
    ['lora 4 × 1 MP', zImageTurboLora, Array(4).fill(px(1024, 1024)), false, '4', 34_000n],
    ['lora no images', zImageTurboLora, [], false, '0', 0n],
  ];
  for (const [name, model, images, expansion, units, micros] of rows) {
    it(name, () => assert.deepEqual(upstreamEstimate(model, images, expansion), { units, micros }));
  }
});

describe('upstreamCost (fal\'s units when it reports them)', () => {
  const one = [px(1024, 1024)];
  const rows: Array<[string, PricedModel, ImageDims[], boolean, string | null | undefined, { micros: bigint; source: string; unitsFal: string | null; disagrees: boolean }]> = [
    ['no header: our estimate', zImageTurbo, one, false, undefined, { micros: 5_000n, source: 'estimate', unitsFal: null, disagrees: false }],
    ['null header: our estimate', zImageTurbo, one, false, null, { micros: 5_000n, source: 'estimate', unitsFal: null, disagrees: false }],
    ['fal agrees', zImageTurbo, one, false, '1', { micros: 5_000n, source: 'fal', unitsFal: '1', disagrees: false }],
    ['fal agrees, written differently', zImageTurbo, one, false, '1.000', { micros: 5_000n, source: 'fal', unitsFal: '1', disagrees: false }],
    ['fal bills fractional units', zImageTurbo, [px(1024, 768)], false, '0.75', { micros: 3_750n, source: 'fal', unitsFal: '0.75', disagrees: true }],
    ['fal bills more', zImageTurboLora, one, false, '2', { micros: 17_000n, source: 'fal', unitsFal: '2', disagrees: true }],
    ['fal units plus the expansion fee', zImageTurbo, one, true, '1', { micros: 7_500n, source: 'fal', unitsFal: '1', disagrees: false }],
    ['unreadable header: estimate, flagged', zImageTurbo, one, false, 'lots', { micros: 5_000n, source: 'estimate', unitsFal: null, disagrees: true }],
    ['negative header: estimate, flagged', zImageTurbo, one, false, '-1', { micros: 5_000n, source: 'estimate', unitsFal: null, disagrees: true }],
  ];
  for (const [name, model, images, expansion, header, expected] of rows) {
    it(name, () => {
      const c = upstreamCost(model, images, expansion, header);
      assert.deepEqual({ micros: c.micros, source: c.source, unitsFal: c.unitsFal, disagrees: c.disagrees }, expected);
      assert.equal(c.unitsEstimate, upstreamEstimate(model, images, false).units);
    });
  }
});

describe('credits', () => {
  it('are 2 per micro-dollar ($1 = 2,000,000)', () => {
    assert.equal(creditsFromMicros(1_000_000n), 2_000_000);
    assert.equal(creditsFromMicros(0n), 0);
  });
  it('refuse values a JSON number cannot hold exactly', () => {
    assert.throws(() => creditsFromMicros(2n ** 53n), RangeError);
  });
});
