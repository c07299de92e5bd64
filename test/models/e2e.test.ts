import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';
import { createServedModelRegistry, modelCatalog, type ModelEntry } from '../../src/models/index.js';
import { falImageFields } from '../../src/schemas/fields.js';
import { imageRequestSchema, imageSizeField, inferenceStepsField, numImagesField, outputFormatField } from '../../src/schemas/request-builder.js';
import { DEFAULT_PRICES_FILE, ENDPOINTS, loadPriceTable, type PriceTable } from '../../src/emulator/index.js';

/**
 * Every catalog model end to end: the service (Z-Image Base priced through
 * MODEL_PRICES, as an operator would) in front of the emulator, which checks
 * the input against its own copy of fal's schema for the endpoint. Each
 * image is decoded to prove its size and format; the emulator's record of
 * the job proves what reached "fal".
 */
const auth = { Authorization: `Bearer ${TEST_KEY}` };

async function decode(item: { url?: string; b64_json?: string }): Promise<[string | undefined, number | undefined, number | undefined]> {
  let bytes: Buffer;
  if (item.b64_json !== undefined) bytes = Buffer.from(item.b64_json, 'base64');
  else {
    const res = await fetch(item.url!);
    assert.equal(res.status, 200, `GET ${item.url}`);
    bytes = Buffer.from(await res.arrayBuffer());
  }
  const meta = await sharp(bytes).metadata();
  return [meta.format, meta.width, meta.height];
}

interface E2eCase {
  name: string;
  body: Record<string, unknown>;
  endpoint: string;
  /** What the emulator must have received, for single-job requests. */
  falInput?: Record<string, unknown>;
  images: number;
  format: 'png' | 'jpeg' | 'webp';
  size: [number, number];
  costUsd: string;
}

const CASES: E2eCase[] = [
  {
    name: 'alibaba/z-image-turbo (OpenAI size, webp)',
    body: { model: 'alibaba/z-image-turbo', prompt: 'a fox', size: '1024x1024', output_format: 'webp' },
    endpoint: 'fal-ai/z-image/turbo',
    falInput: { prompt: 'a fox', image_size: { width: 1024, height: 1024 }, num_images: 1, output_format: 'webp', enable_safety_checker: true, enable_prompt_expansion: false, sync_mode: false },
    images: 1,
    format: 'webp',
    size: [1024, 1024],
    costUsd: '0.005000',
  },
  {
    name: 'alibaba/z-image-base (negative prompt, guidance, webp)',
    body: { model: 'alibaba/z-image-base', prompt: 'a fox', size: '768x1024', output_format: 'webp', negative_prompt: 'blurry', guidance_scale: 6 },
    endpoint: 'fal-ai/z-image/base',
    falInput: {
      prompt: 'a fox',
      image_size: { width: 768, height: 1024 },
      num_images: 1,
      output_format: 'webp',
      enable_safety_checker: true,
      negative_prompt: 'blurry',
      guidance_scale: 6,
      sync_mode: false,
    },
    images: 1,
    format: 'webp',
    size: [768, 1024],
    costUsd: '0.010000',
  },
  {
    name: 'alibaba/z-image-base-lora (LoRA, b64_json)',
    body: { model: 'fal-ai/z-image/base/lora', prompt: 'a fox', image_size: { width: 1536, height: 640 }, loras: [{ path: 'owner/repo', scale: 0.5 }], response_format: 'b64_json' },
    endpoint: 'fal-ai/z-image/base/lora',
    falInput: {
      prompt: 'a fox',
      image_size: { width: 1536, height: 640 },
      num_images: 1,
      output_format: 'png',
      enable_safety_checker: true,
      loras: [{ path: 'owner/repo', scale: 0.5 }],
      sync_mode: true,
    },
    images: 1,
    format: 'png',
    size: [1536, 640],
    costUsd: '0.012000',
  },
  {
    name: "flux/schnell (n 2, fal's jpeg default)",
    body: { model: 'flux/schnell', prompt: 'a fox', n: 2, size: '512x512', num_inference_steps: 2, seed: 11 },
    endpoint: 'fal-ai/flux/schnell',
    falInput: { prompt: 'a fox', image_size: { width: 512, height: 512 }, num_images: 2, output_format: 'jpeg', enable_safety_checker: true, num_inference_steps: 2, seed: 11, sync_mode: false },
    images: 2,
    format: 'jpeg',
    size: [512, 512],
    costUsd: '0.006000',
  },
  {
    name: 'flux/schnell (n 6: two fal jobs)',
    body: { model: 'flux/schnell', prompt: 'a fox', n: 6, image_size: 'square', response_format: 'b64_json' },
    endpoint: 'fal-ai/flux/schnell',
    images: 6,
    format: 'jpeg',
    size: [512, 512],
    costUsd: '0.018000',
  },
  {
    name: 'flux/dev (preset, png, guidance)',
    body: { model: 'flux/dev', prompt: 'a fox', image_size: 'landscape_16_9', output_format: 'png', guidance_scale: 4, num_inference_steps: 20 },
    endpoint: 'fal-ai/flux/dev',
    falInput: {
      prompt: 'a fox',
      image_size: 'landscape_16_9',
      num_images: 1,
      output_format: 'png',
      enable_safety_checker: true,
      guidance_scale: 4,
      num_inference_steps: 20,
      sync_mode: false,
    },
    images: 1,
    format: 'png',
    size: [1024, 576],
    costUsd: '0.025000',
  },
  {
    name: 'blackforestlabs/flux-2-lora (LoRA, expansion, webp)',
    body: {
      model: 'blackforestlabs/flux-2-lora',
      prompt: 'a fox',
      image_size: { width: 1472, height: 512 },
      output_format: 'webp',
      enable_prompt_expansion: true,
      loras: [{ path: 'https://example.com/style.safetensors' }],
    },
    endpoint: 'fal-ai/flux-2/lora',
    falInput: {
      prompt: 'a fox',
      image_size: { width: 1472, height: 512 },
      num_images: 1,
      output_format: 'webp',
      enable_safety_checker: true,
      enable_prompt_expansion: true,
      loras: [{ path: 'https://example.com/style.safetensors' }],
      sync_mode: false,
    },
    images: 1,
    format: 'webp',
    size: [1472, 512],
    // 1 MP × $0.021; expansion is free on this endpoint.
    costUsd: '0.021000',
  },
];

describe('every catalog model through the service and the emulator', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ MODEL_PRICES: '{"alibaba/z-image-base":"0.01","alibaba/z-image-base-lora":"0.012"}' });
  });
  after(async () => {
    await t.close();
  });

  for (const c of CASES) {
    it(c.name, async () => {
      const jobsBefore = t.emulator.jobs().filter((j) => j.endpoint === c.endpoint).length;
      const res = await request(t.url).post('/v1/images/generations').set(auth).send(c.body);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assertMatchesSchema('images', res.body);
      assert.equal(res.body.data.length, c.images);
      for (const item of res.body.data) assert.deepEqual(await decode(item), [c.format, ...c.size]);
      assert.equal(res.body.meta.usage.cost_usd, c.costUsd);
      assert.equal(res.headers['x-usage-cost-usd'], c.costUsd);

      // fal makes at most 4 images a job: more are split into several.
      const jobs = t.emulator.jobs().filter((j) => j.endpoint === c.endpoint).length - jobsBefore;
      assert.equal(jobs, Math.ceil(c.images / 4));
      if (c.falInput) {
        const job = t.emulator.job(res.body.meta.fal_request_id as string);
        assert.ok(job, 'the emulator ran the job');
        assert.equal(job.endpoint, c.endpoint);
        assert.deepEqual(job.input, c.falInput);
      }
    });
  }
});

/**
 * docs/MODELS.md's three steps for adding a model, taken in this test only:
 * (1) the entry, its schema composed in place from the shared fields;
 * (2) the entry listed with the catalog; (3) the emulator given fal's
 * endpoint and its price row. Nothing else is written for it: the service
 * then validates, fans out, prices and lists it like any catalog model.
 */
describe('a model added as one entry', () => {
  const endpoint = 'acme-ai/sketch';
  // Step 1: the entry.
  const sketch: ModelEntry = {
    id: 'acme/sketch',
    aliases: [endpoint],
    endpoint,
    ownedBy: 'acme',
    created: 1767225600,
    description: 'A test-only model: 2 images per fal job, sides 256 to 1024.',
    requestSchema: imageRequestSchema({
      title: 'acme/sketch image generation request',
      description: 'Body of POST /v1/images/generations for acme/sketch (acme-ai/sketch).',
      fields: {
        image_size: imageSizeField({ minSide: 256, maxSide: 1024, multipleOf: 64, defaultPreset: 'square' }),
        num_images: numImagesField(2),
        num_inference_steps: inferenceStepsField(1, 20, 10),
        seed: falImageFields.seed,
        output_format: outputFormatField(['png', 'jpeg'], 'png'),
        enable_safety_checker: falImageFields.enable_safety_checker,
      },
    }),
    maxImagesPerJob: 2,
    maxImagesPerRequest: 10,
    defaults: { image_size: 'square', num_images: 1, num_inference_steps: 10, output_format: 'png', enable_safety_checker: true },
    pricing: { unit: 'megapixel', rateUsd: '0.04', megapixelPixels: 1_048_576, rounding: 'ceil_per_image' },
  };
  // Step 2: listed with the catalog.
  const catalog = [...modelCatalog, sketch];
  // Step 3: the emulator's copy of fal serves the endpoint (FLUX.1 [dev]'s input rules) at its price.
  const falInputRules = ENDPOINTS.find((e) => e.id === 'fal-ai/flux/dev')!.input;
  const table = loadPriceTable(DEFAULT_PRICES_FILE);
  const prices = {
    ...table,
    endpoints: { ...table.endpoints, [endpoint]: { unit: 'megapixel', usd_per_unit: '0.04', megapixel_pixels: 1_048_576, rounding: 'ceil_per_image' } },
  } satisfies PriceTable;

  let t: TestService;
  before(async () => {
    t = await startTestService(
      {},
      { endpoints: [...ENDPOINTS, { id: endpoint, priceKey: endpoint, input: falInputRules }], prices },
      { registry: createServedModelRegistry({ catalog, prices: {} }) },
    );
  });
  after(async () => {
    await t.close();
  });

  it('serves it: n above the per-job maximum fans out, each image is priced by the entry', async () => {
    const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: 'acme/sketch', prompt: 'a kite', n: 3, size: '512x512' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assertMatchesSchema('images', res.body);
    assert.equal(res.body.data.length, 3);
    for (const item of res.body.data) assert.deepEqual(await decode(item), ['png', 512, 512]);
    // 3 images of 0.25 MP, each rounded up to 1 MP, at $0.04.
    assert.equal(res.body.meta.usage.cost_usd, '0.120000');
    const jobs = t.emulator.jobs().filter((j) => j.endpoint === endpoint);
    assert.deepEqual(jobs.map((j) => j.input['num_images']).sort(), [1, 2]);
    assert.deepEqual(jobs[0]!.input['image_size'], { width: 512, height: 512 });
  });

  it('holds requests to its own schema', async () => {
    const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: endpoint, prompt: 'a kite', size: '1536x1536' });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'size');
  });

  it('lists it with its limits and price', async () => {
    const res = await request(t.url).get('/v1/models/acme/sketch').set(auth);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.id, 'acme/sketch');
    assert.equal(res.body.endpoint, endpoint);
    assert.deepEqual(
      [res.body.limits.max_images_per_job, res.body.limits.min_side, res.body.limits.max_side, res.body.limits.max_inference_steps],
      [2, 256, 1024, 20],
    );
    assert.equal(res.body.pricing.usd_per_unit, '0.04');
  });
});
