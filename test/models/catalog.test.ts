import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { DEFAULT_PRICES_FILE, ENDPOINTS, loadPriceTable } from '../../src/emulator/index.js';
import { EMITTED_SCHEMAS } from '../../src/schemas/index.js';
import { ApiError } from '../../src/errors.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import { createModelRegistry, modelCatalog, PINNED_FIELDS, priceCatalog, type ModelEntry } from '../../src/models/index.js';
import { callerCharge, maxCharge } from '../../src/metering/pricing.js';
import { parseMarkup } from '../../src/metering/money.js';
import { describeModel } from '../../src/models/describe.js';

/**
 * Every catalog model, table-driven: a request in the caller's dialect and
 * the exact fal input it becomes, what a few sizes cost, and a refusal that
 * names a field only that model family has (or lacks). Z-Image Base is
 * served here at a configured test price, as MODEL_PRICES would.
 */
const BASE_TEST_PRICE = '0.01';
const priced = priceCatalog(modelCatalog, { 'alibaba/z-image-base': { rateUsd: BASE_TEST_PRICE }, 'fal-ai/z-image/base/lora': { rateUsd: '0.012' } });
const registry = createModelRegistry(priced.served);
const x1 = parseMarkup('1');

function model(id: string): ModelEntry {
  const m = registry.lookup(id);
  assert.ok(m, `${id} is served`);
  return m;
}

function rejection(body: Record<string, unknown>): ApiError {
  try {
    normalizeRequest(registry, body);
  } catch (e) {
    if (e instanceof ApiError) return e;
    throw e;
  }
  assert.fail(`expected a rejection of ${JSON.stringify(body)}`);
}

const PROMPT = 'a lighthouse at dawn';

interface MappingCase {
  name: string;
  body: Record<string, unknown>;
  fal: Record<string, unknown>;
  numImages: number;
  size: [number, number];
  responseFormat: 'url' | 'b64_json';
}

interface ModelCase {
  id: string;
  endpoint: string;
  aliases: string[];
  mappings: MappingCase[];
  /** [width, height, images, with expansion, micro-dollars at markup 1] */
  charges: Array<[number, number, number, boolean, bigint]>;
  refusals: Array<[string, Record<string, unknown>, string, RegExp]>;
}

const CASES: ModelCase[] = [
  {
    id: 'alibaba/z-image-turbo',
    endpoint: 'fal-ai/z-image/turbo',
    aliases: ['fal-ai/z-image/turbo'],
    mappings: [
      {
        name: 'defaults only',
        body: { prompt: PROMPT },
        fal: { prompt: PROMPT, image_size: 'landscape_4_3', num_images: 1, output_format: 'png', enable_safety_checker: true, enable_prompt_expansion: false },
        numImages: 1,
        size: [1024, 768],
        responseFormat: 'url',
      },
    ],
    charges: [
      [1024, 768, 1, false, 5_000n],
      [1024, 768, 1, true, 7_500n],
    ],
    refusals: [['steps above 8', { num_inference_steps: 9 }, 'num_inference_steps', /at most 8/]],
  },
  {
    id: 'alibaba/z-image-base',
    endpoint: 'fal-ai/z-image/base',
    aliases: ['fal-ai/z-image/base'],
    mappings: [
      {
        name: 'aimlapi dialect with guidance and a negative prompt',
        body: { prompt: PROMPT, negative_prompt: 'blurry', guidance_scale: 7.5, num_inference_steps: 50, image_size: 'portrait_4_3', output_format: 'webp', acceleration: 'high', seed: 9 },
        fal: {
          prompt: PROMPT,
          image_size: 'portrait_4_3',
          num_images: 1,
          output_format: 'webp',
          enable_safety_checker: true,
          negative_prompt: 'blurry',
          guidance_scale: 7.5,
          num_inference_steps: 50,
          acceleration: 'high',
          seed: 9,
        },
        numImages: 1,
        size: [768, 1024],
        responseFormat: 'url',
      },
      {
        name: 'OpenAI dialect',
        body: { prompt: PROMPT, n: 3, size: '2048x512', response_format: 'b64_json', quality: 'auto', background: 'auto', user: 'u-1' },
        fal: { prompt: PROMPT, image_size: { width: 2048, height: 512 }, num_images: 3, output_format: 'png', enable_safety_checker: true },
        numImages: 3,
        size: [2048, 512],
        responseFormat: 'b64_json',
      },
    ],
    charges: [
      [1024, 768, 1, false, 10_000n],
      [2048, 2048, 2, false, 80_000n],
    ],
    refusals: [
      ['guidance below 1', { guidance_scale: 0.5 }, 'guidance_scale', /guidance_scale must be at least 1/],
      ['prompt expansion (Turbo and FLUX.2 only)', { enable_prompt_expansion: true }, 'enable_prompt_expansion',
        /^enable_prompt_expansion is not supported by alibaba\/z-image-base; it is accepted by alibaba\/z-image-turbo, alibaba\/z-image-turbo-lora, blackforestlabs\/flux-2-lora$/],
      ['loras (the LoRA endpoint only)', { loras: [{ path: 'owner/repo' }] }, 'loras', /loras is not supported by alibaba\/z-image-base; it is accepted by .*alibaba\/z-image-base-lora/],
    ],
  },
  {
    id: 'alibaba/z-image-base-lora',
    endpoint: 'fal-ai/z-image/base/lora',
    aliases: ['fal-ai/z-image/base/lora'],
    mappings: [
      {
        name: 'LoRAs pass through',
        body: { prompt: PROMPT, loras: [{ path: 'https://example.com/w.safetensors', scale: 0.7 }, { path: 'owner/repo' }], num_images: 2 },
        fal: {
          prompt: PROMPT,
          image_size: 'landscape_4_3',
          num_images: 2,
          output_format: 'png',
          enable_safety_checker: true,
          loras: [{ path: 'https://example.com/w.safetensors', scale: 0.7 }, { path: 'owner/repo' }],
        },
        numImages: 2,
        size: [1024, 768],
        responseFormat: 'url',
      },
    ],
    charges: [[1024, 1024, 1, false, 12_000n]],
    refusals: [['four LoRAs', { loras: [{ path: 'a/b' }, { path: 'c/d' }, { path: 'e/f' }, { path: 'g/h' }] }, 'loras', /at most 3 LoRAs/]],
  },
  {
    id: 'flux/schnell',
    endpoint: 'fal-ai/flux/schnell',
    aliases: ['fal-ai/flux/schnell'],
    mappings: [
      {
        name: "defaults only (fal's jpeg)",
        body: { prompt: PROMPT },
        fal: { prompt: PROMPT, image_size: 'landscape_4_3', num_images: 1, output_format: 'jpeg', enable_safety_checker: true },
        numImages: 1,
        size: [1024, 768],
        responseFormat: 'url',
      },
      {
        name: 'OpenAI dialect plus FLUX fields',
        body: { prompt: PROMPT, n: 4, size: '64x1536', response_format: 'b64_json', num_inference_steps: 12, guidance_scale: 1, seed: 77, output_format: null, style: null },
        fal: { prompt: PROMPT, image_size: { width: 64, height: 1536 }, num_images: 4, output_format: 'jpeg', enable_safety_checker: true, num_inference_steps: 12, guidance_scale: 1, seed: 77 },
        numImages: 4,
        size: [64, 1536],
        responseFormat: 'b64_json',
      },
    ],
    charges: [
      [1024, 768, 1, false, 3_000n],
      [1536, 1024, 1, false, 6_000n], // 1.5 MiB-pixels round up to 2
      [1536, 1536, 1, false, 9_000n], // 2.25 → 3
      [64, 64, 4, false, 12_000n], // each image at least one megapixel
    ],
    refusals: [
      ['steps above 12', { num_inference_steps: 13 }, 'num_inference_steps', /num_inference_steps must be at most 12/],
      ['webp (FLUX.1 has jpeg and png only)', { output_format: 'webp' }, 'output_format', /output_format/],
      ['a side above 1536', { size: '2048x1024' }, 'size', /^size "2048x1024": /],
      ['negative_prompt (Z-Image Base only)', { negative_prompt: 'x' }, 'negative_prompt',
        /^negative_prompt is not supported by flux\/schnell; it is accepted by alibaba\/z-image-base, alibaba\/z-image-base-lora$/],
    ],
  },
  {
    id: 'flux/dev',
    endpoint: 'fal-ai/flux/dev',
    aliases: ['fal-ai/flux/dev'],
    mappings: [
      {
        name: 'aimlapi dialect through the fal alias',
        body: { model: 'fal-ai/flux/dev', prompt: PROMPT, image_size: 'portrait_16_9', num_images: 4, num_inference_steps: 40, guidance_scale: 5.5, output_format: 'png', enable_safety_checker: false, acceleration: 'high', seed: 123 },
        fal: { prompt: PROMPT, image_size: 'portrait_16_9', num_images: 4, output_format: 'png', enable_safety_checker: false, num_inference_steps: 40, guidance_scale: 5.5, acceleration: 'high', seed: 123 },
        numImages: 4,
        size: [576, 1024],
        responseFormat: 'url',
      },
    ],
    charges: [
      [1024, 768, 1, false, 25_000n],
      [1536, 1024, 2, false, 100_000n],
    ],
    refusals: [
      ['a side below 512', { image_size: { width: 256, height: 512 } }, 'image_size', /image_size/],
      ['guidance above 20', { guidance_scale: 20.5 }, 'guidance_scale', /guidance_scale must be at most 20/],
      ['provider (Z-Image Turbo only)', { provider: 'fal' }, 'provider', /^provider is not supported by flux\/dev; it is accepted by alibaba\/z-image-turbo$/],
    ],
  },
  {
    id: 'blackforestlabs/flux-2-lora',
    endpoint: 'fal-ai/flux-2/lora',
    aliases: ['fal-ai/flux-2/lora'],
    mappings: [
      {
        name: 'LoRAs, expansion and guidance 0',
        body: { prompt: PROMPT, image_size: { width: 1472, height: 512 }, loras: [{ path: 'owner/repo', scale: 1.5 }], enable_prompt_expansion: true, guidance_scale: 0, num_inference_steps: 4, output_format: 'webp' },
        fal: {
          prompt: PROMPT,
          image_size: { width: 1472, height: 512 },
          num_images: 1,
          output_format: 'webp',
          enable_safety_checker: true,
          enable_prompt_expansion: true,
          loras: [{ path: 'owner/repo', scale: 1.5 }],
          guidance_scale: 0,
          num_inference_steps: 4,
        },
        numImages: 1,
        size: [1472, 512],
        responseFormat: 'url',
      },
      {
        name: "defaults only (expansion off, fal's default)",
        body: { prompt: PROMPT },
        fal: { prompt: PROMPT, image_size: 'landscape_4_3', num_images: 1, output_format: 'png', enable_safety_checker: true, enable_prompt_expansion: false },
        numImages: 1,
        size: [1024, 768],
        responseFormat: 'url',
      },
    ],
    charges: [
      [1472, 512, 1, false, 21_000n],
      [1472, 512, 1, true, 21_000n], // no expansion fee on this endpoint
      [2048, 2048, 1, false, 84_000n],
    ],
    refusals: [
      ['steps below 4', { num_inference_steps: 3 }, 'num_inference_steps', /num_inference_steps must be at least 4/],
      ['a side not a multiple of 32', { image_size: { width: 1000, height: 512 } }, 'image_size', /image_size/],
    ],
  },
];

describe('the catalog', () => {
  const published = new Map(EMITTED_SCHEMAS.map((s) => [s.schema, s.file]));
  const openapi = readFileSync(new URL('../../openapi.yaml', import.meta.url), 'utf8');
  const emulatorPrices = loadPriceTable(DEFAULT_PRICES_FILE);

  // What any model must satisfy, checked for every entry so that a new one needs no row of its own here.
  for (const m of registry.list()) {
    it(`${m.id}: a prompt alone becomes fal's input with every price-deciding field pinned from its defaults`, () => {
      const r = normalizeRequest(registry, { model: m.id, prompt: PROMPT });
      const pinned = PINNED_FIELDS.filter((f) => Object.hasOwn(m.requestSchema.properties, f));
      assert.deepEqual(r.falInput, { prompt: PROMPT, ...Object.fromEntries(pinned.map((f) => [f, m.defaults[f]])) });
      assert.ok(maxCharge({ model: m, numImages: 1, size: r.size, promptExpansion: false }, x1) > 0n, 'a default image costs something');
    });

    it(`${m.id}: its request schema is published in schemas/ and openapi.yaml`, () => {
      const file = published.get(m.requestSchema);
      assert.ok(file, 'list the schema in EMITTED_SCHEMAS (src/schemas/index.ts) and run npx tsx scripts/emit-schemas.ts');
      assert.ok(openapi.includes(`'./schemas/${file}'`), `reference ./schemas/${file} from the request body of openapi.yaml`);
    });

    it(`${m.id}: the emulator serves ${m.endpoint} at a price`, () => {
      assert.ok(ENDPOINTS.some((e) => e.id === m.endpoint), 'add the endpoint to ENDPOINTS (src/emulator/endpoints.ts)');
      assert.ok(emulatorPrices.endpoints[m.endpoint], 'add its row to src/emulator/prices.json');
    });
  }

  it('prices every model without a confirmed price only through configuration', () => {
    assert.deepEqual(priceCatalog(modelCatalog, {}).unserved.map((m) => m.id), ['alibaba/z-image-turbo (inpaint)', 'alibaba/z-image-turbo-lora (inpaint)', 'alibaba/z-image-base', 'alibaba/z-image-base-lora']);
  });
});

for (const c of CASES) {
  describe(c.id, () => {
    const m = model(c.id);

    it(`routes to ${c.endpoint}, also by its aliases`, () => {
      assert.equal(m.endpoint, c.endpoint);
      assert.deepEqual([...m.aliases], c.aliases);
      for (const a of c.aliases) assert.equal(registry.lookup(a), m);
    });

    for (const mc of c.mappings) {
      it(`maps ${mc.name} to the exact fal input`, () => {
        const r = normalizeRequest(registry, { model: c.id, ...mc.body });
        assert.equal(r.model, m);
        assert.deepEqual(r.falInput, mc.fal);
        assert.equal(r.numImages, mc.numImages);
        assert.deepEqual(r.size, { width: mc.size[0], height: mc.size[1] });
        assert.equal(r.responseFormat, mc.responseFormat);
      });
    }

    for (const [w, h, n, expansion, micros] of c.charges) {
      it(`charges ${n} × ${w}x${h}${expansion ? ' with expansion' : ''}: ${micros} micro-dollars`, () => {
        const images = Array.from({ length: n }, () => ({ width: w, height: h }));
        assert.equal(callerCharge(m, images, expansion, x1).micros, micros);
        assert.equal(maxCharge({ model: m, numImages: n, size: { width: w, height: h }, promptExpansion: expansion }, x1), micros);
      });
    }

    for (const [name, extra, param, message] of c.refusals) {
      it(`refuses ${name}, naming ${param}`, () => {
        const e = rejection({ model: c.id, prompt: PROMPT, ...extra });
        assert.equal(e.status, 400);
        assert.equal(e.param, param);
        assert.match(e.message, message);
      });
    }

    it('advertises its limits as its schema enforces them', () => {
      const d = describeModel(m, x1);
      assert.equal(d.id, c.id);
      assert.equal(d.limits.max_images_per_job, 4);
      assert.equal(d.limits.max_images_per_request, 10);
      assert.equal(d.pricing.usd_per_unit, m.pricing.rateUsd);
      assert.equal(d.pricing.unit, 'megapixel');
    });
  });
}

describe("fal's published facts the entries carry", () => {
  const limits = (id: string) => {
    const d = describeModel(model(id), x1).limits;
    return [d.min_side, d.max_side, d.side_multiple_of, d.min_inference_steps, d.max_inference_steps, d.max_loras];
  };
  const rows: Array<[string, unknown[], Record<string, unknown>]> = [
    ['flux/schnell', [64, 1536, 32, 1, 12, 0], { num_inference_steps: 4, guidance_scale: 3.5, output_format: 'jpeg', acceleration: 'none' }],
    ['flux/dev', [512, 1536, 32, 1, 50, 0], { num_inference_steps: 28, guidance_scale: 3.5, output_format: 'jpeg', acceleration: 'none' }],
    ['blackforestlabs/flux-2-lora', [512, 2048, 32, 4, 50, 3], { num_inference_steps: 28, guidance_scale: 2.5, output_format: 'png', enable_prompt_expansion: false }],
    ['alibaba/z-image-base', [512, 2048, 32, 1, 50, 0], { num_inference_steps: 28, guidance_scale: 4, negative_prompt: '', output_format: 'png' }],
    ['alibaba/z-image-base-lora', [512, 2048, 32, 1, 50, 3], { num_inference_steps: 28, guidance_scale: 4, output_format: 'png' }],
  ];
  for (const [id, expected, defaults] of rows) {
    it(`${id}: sides, steps, LoRAs and defaults`, () => {
      assert.deepEqual(limits(id), expected);
      for (const [k, v] of Object.entries(defaults)) assert.equal(model(id).defaults[k], v, k);
    });
  }

  it("matches aimlapi's published FLUX.2 LoRA example: 1472x512 at markup 1.05 is 44,100 credits", () => {
    assert.equal(callerCharge(model('blackforestlabs/flux-2-lora'), [{ width: 1472, height: 512 }], false, parseMarkup('1.05')).credits, 44_100);
  });
});
