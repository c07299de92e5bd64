import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createModelRegistry, defaultModels, zImageTurbo, zImageTurboLora, type ModelEntry } from '../../src/models/index.js';

describe('default registry', () => {
  const registry = createModelRegistry(defaultModels);

  it('lists the models with confirmed prices in declaration order', () => {
    assert.deepEqual(
      registry.list().map((m) => [m.id, m.endpoint]),
      [
        ['alibaba/z-image-turbo', 'fal-ai/z-image/turbo'],
        ['alibaba/z-image-turbo-lora', 'fal-ai/z-image/turbo/lora'],
        ['flux/schnell', 'fal-ai/flux/schnell'],
        ['flux/dev', 'fal-ai/flux/dev'],
        ['blackforestlabs/flux-2-lora', 'fal-ai/flux-2/lora'],
      ],
    );
  });

  it('carries the prices of REFERENCE §4', () => {
    const turbo = registry.lookup('alibaba/z-image-turbo');
    const lora = registry.lookup('alibaba/z-image-turbo-lora');
    assert.deepEqual(turbo?.pricing, { unit: 'megapixel', rateUsd: '0.005', megapixelPixels: 1_048_576, rounding: 'ceil_per_image', promptExpansionUsd: '0.0025' });
    assert.equal(lora?.pricing.rateUsd, '0.0085');
  });

  it("uses fal's defaults (prompt expansion off)", () => {
    assert.deepEqual(registry.lookup('alibaba/z-image-turbo')?.defaults, {
      image_size: 'landscape_4_3',
      num_images: 1,
      num_inference_steps: 8,
      output_format: 'png',
      enable_safety_checker: true,
      enable_prompt_expansion: false,
      acceleration: 'regular',
    });
  });

  const lookups: Array<[string, string | undefined]> = [
    ['alibaba/z-image-turbo', 'alibaba/z-image-turbo'],
    ['alibaba/z-image-turbo-lora', 'alibaba/z-image-turbo-lora'],
    ['fal-ai/z-image/turbo', 'alibaba/z-image-turbo'],
    ['fal-ai/z-image/turbo/lora', 'alibaba/z-image-turbo-lora'],
    ['ALIBABA/Z-IMAGE-TURBO', undefined],
    [' alibaba/z-image-turbo', undefined],
    ['alibaba/z-image-turbo ', undefined],
    ['z-image-turbo', undefined],
    ['alibaba/z-image', undefined],
    ['alibaba/z-image-turbo-lora-v2', undefined],
    ['alibaba/z-image-turbo/', undefined],
    ['fal-ai/z-image', undefined],
    ['', undefined],
    ['constructor', undefined],
    ['__proto__', undefined],
    ['toString', undefined],
  ];
  for (const [name, expected] of lookups) {
    it(`lookup(${JSON.stringify(name)}) → ${expected ?? 'undefined'}`, () => {
      assert.equal(registry.lookup(name)?.id, expected);
    });
  }

  it('freezes entries so a request cannot change a price', () => {
    const m = registry.lookup('alibaba/z-image-turbo');
    assert.ok(m && Object.isFrozen(m) && Object.isFrozen(m.pricing) && Object.isFrozen(m.defaults) && Object.isFrozen(m.aliases));
    assert.ok(Object.isFrozen(registry.list()));
  });

  it('keeps its own copies of the entries', () => {
    const entry = { ...zImageTurbo, pricing: { ...zImageTurbo.pricing } };
    const r = createModelRegistry([entry]);
    (entry.pricing as { rateUsd: string }).rateUsd = '0';
    assert.equal(r.lookup(zImageTurbo.id)?.pricing.rateUsd, '0.005');
  });

  it('compiles validators once per model', () => {
    const m = registry.lookup('alibaba/z-image-turbo-lora');
    assert.ok(m);
    assert.equal(registry.validators(m), registry.validators(m));
    assert.equal(registry.validators(m).body({ model: m.id, prompt: 'x', loras: [{ path: 'a/b', scale: 1 }] }), true);
    assert.equal(registry.validators(m).imageSize?.({ width: 1024, height: 1000 }), false);
  });

  it('refuses validators() for an entry it does not hold', () => {
    assert.throws(() => registry.validators(zImageTurbo), /not an entry of this registry/);
  });
});

type Mutable = { -readonly [K in keyof ModelEntry]: unknown };
const mutate = (base: ModelEntry, change: (e: Mutable) => void): ModelEntry => {
  const e = structuredClone({ ...base }) as unknown as Mutable;
  change(e);
  return e as unknown as ModelEntry;
};

describe('createModelRegistry refuses invalid entries (start-up fails loudly)', () => {
  const cases: Array<[string, readonly ModelEntry[], RegExp]> = [
    ['no entries', [], /no models configured/],
    ['pricing missing', [mutate(zImageTurbo, (e) => delete (e as Partial<Mutable>).pricing)], /alibaba\/z-image-turbo: pricing is missing/],
    ['rateUsd missing', [mutate(zImageTurbo, (e) => (e.pricing = { unit: 'megapixel', megapixelPixels: 1048576, rounding: 'ceil_per_image', promptExpansionUsd: '0.0025' }))], /rateUsd is missing/],
    ['rateUsd zero', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rateUsd: '0' }))], /greater than 0/],
    ['rateUsd "0.000"', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rateUsd: '0.000' }))], /greater than 0/],
    ['rateUsd not a decimal', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rateUsd: 'five' }))], /rateUsd must be a non-negative decimal/],
    ['rateUsd negative', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rateUsd: '-0.005' }))], /rateUsd must be a non-negative decimal/],
    ['rateUsd as a float', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rateUsd: 0.005 }))], /decimal string/],
    ['unknown unit', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, unit: 'token' }))], /pricing.unit/],
    ['megapixelPixels missing', [mutate(zImageTurbo, (e) => (e.pricing = { unit: 'megapixel', rateUsd: '0.005', rounding: 'ceil_per_image', promptExpansionUsd: '0.0025' }))], /megapixelPixels/],
    ['rounding unknown', [mutate(zImageTurbo, (e) => (e.pricing = { ...zImageTurbo.pricing, rounding: 'round' }))], /pricing.rounding/],
    ['prompt expansion offered but unpriced', [mutate(zImageTurbo, (e) => (e.pricing = { unit: 'megapixel', rateUsd: '0.005', megapixelPixels: 1048576, rounding: 'ceil_per_image' }))], /promptExpansionUsd is missing/],
    ['duplicate id', [zImageTurbo, zImageTurbo], /already taken by alibaba\/z-image-turbo/],
    ['alias clashing with an id', [zImageTurbo, mutate(zImageTurboLora, (e) => (e.aliases = ['alibaba/z-image-turbo']))], /"alibaba\/z-image-turbo" is already taken/],
    ['alias with spaces', [mutate(zImageTurbo, (e) => (e.aliases = ['z image']))], /alias "z image"/],
    ['empty id', [mutate(zImageTurbo, (e) => (e.id = ''))], /id must be/],
    ['bad endpoint', [mutate(zImageTurbo, (e) => (e.endpoint = 'https://queue.fal.run/fal-ai/z-image/turbo'))], /endpoint must be a fal endpoint id/],
    ['created missing', [mutate(zImageTurbo, (e) => delete (e as Partial<Mutable>).created)], /created must be unix seconds/],
    ['maxImagesPerJob not matching the schema', [mutate(zImageTurbo, (e) => (e.maxImagesPerJob = 8))], /maximum \(4\) must equal maxImagesPerJob \(8\)/],
    ['schema not closed', [mutate(zImageTurbo, (e) => (e.requestSchema = { ...zImageTurbo.requestSchema, additionalProperties: true }))], /additionalProperties: false/],
    ['schema without prompt', [mutate(zImageTurbo, (e) => (e.requestSchema = { type: 'object', properties: { model: { type: 'string' } }, required: ['model'], additionalProperties: false }))], /must define "prompt"/],
    ['schema that does not compile', [mutate(zImageTurbo, (e) => (e.requestSchema = { ...zImageTurbo.requestSchema, properties: { ...zImageTurbo.requestSchema.properties, seed: { type: 'integr' } } }))], /does not compile/],
    ['a size preset without pixels', [mutate(zImageTurbo, (e) => (e.requestSchema = { ...zImageTurbo.requestSchema, properties: { ...zImageTurbo.requestSchema.properties, image_size: { anyOf: [{ type: 'string', enum: ['square_hd', 'square_4k'] }] } } }))], /preset "square_4k" has no pixel size/],
    ['defaults outside the schema', [mutate(zImageTurbo, (e) => (e.defaults = { ...zImageTurbo.defaults, num_images: 5 }))], /defaults do not satisfy/],
    ['a price-deciding default missing', [mutate(zImageTurbo, (e) => (e.defaults = { ...zImageTurbo.defaults, output_format: undefined }))], /defaults.output_format is missing; it decides the price/],
    ['a price-deciding default absent', [mutate(zImageTurbo, (e) => {
      const { enable_prompt_expansion: _, ...rest } = zImageTurbo.defaults;
      e.defaults = rest;
    })], /defaults.enable_prompt_expansion is missing/],
  ];
  for (const [name, entries, message] of cases) {
    it(name, () => assert.throws(() => createModelRegistry(entries), message));
  }

  it('names the model in every message', () => {
    assert.throws(
      () => createModelRegistry([zImageTurbo, mutate(zImageTurboLora, (e) => delete (e as Partial<Mutable>).pricing)]),
      /^Error: Model registry: alibaba\/z-image-turbo-lora: pricing is missing\. A model without a valid price is never served$/,
    );
  });

  it('accepts a per-image priced model and a per-request priced model', () => {
    const perImage = mutate(zImageTurbo, (e) => {
      e.id = 'test/per-image';
      e.aliases = [];
      e.pricing = { unit: 'image', rateUsd: '0.03', promptExpansionUsd: '0.0025' };
    });
    const perRequest = mutate(zImageTurboLora, (e) => {
      e.id = 'test/per-request';
      e.aliases = [];
      e.pricing = { unit: 'request', rateUsd: '0.01', promptExpansionUsd: '0' };
    });
    assert.deepEqual(createModelRegistry([perImage, perRequest]).list().map((m) => m.id), ['test/per-image', 'test/per-request']);
  });
});
