import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from '../../src/errors.js';
import { normalizeRequest, type CanonicalRequest } from '../../src/images/normalize.js';
import { createModelRegistry, zImageTurbo, zImageTurboLora } from '../../src/models/index.js';
import { falImageFields, FIELD_RULES, IMAGE_SIZE_PRESET_PIXELS, IMAGE_SIZE_PRESETS } from '../../src/schemas/fields.js';
import { imageRequestSchema } from '../../src/schemas/request-builder.js';

// The Z-Image Turbo pair alone, so messages naming "the other models" stay about this family; the whole catalog is test/models/catalog.test.ts.
const registry = createModelRegistry([zImageTurbo, zImageTurboLora]);
const TURBO = 'alibaba/z-image-turbo';
const LORA = 'alibaba/z-image-turbo-lora';

const turbo = (extra: Record<string, unknown> = {}) => ({ model: TURBO, prompt: 'a red fox in snow', ...extra });
const lora = (extra: Record<string, unknown> = {}) => ({ model: LORA, prompt: 'a red fox in snow', ...extra });

function normalize(body: unknown): CanonicalRequest {
  return normalizeRequest(registry, body);
}

function rejection(body: unknown, strictParams = false): ApiError {
  try {
    normalizeRequest(registry, body, { strictParams });
  } catch (e) {
    if (e instanceof ApiError) return e;
    throw e;
  }
  assert.fail(`expected a rejection of ${JSON.stringify(body)}`);
}

describe('only required params', () => {
  it("fills in fal's defaults explicitly", () => {
    const c = normalize(turbo());
    assert.equal(c.model.id, TURBO);
    assert.deepEqual(c.falInput, {
      prompt: 'a red fox in snow',
      image_size: 'landscape_4_3',
      num_images: 1,
      output_format: 'png',
      enable_safety_checker: true,
      enable_prompt_expansion: false,
    });
    assert.equal(c.numImages, 1);
    assert.deepEqual(c.size, { width: 1024, height: 768 });
    assert.equal(c.responseFormat, 'url');
    assert.equal(c.outputFormat, 'png');
    assert.equal(c.promptExpansion, false);
    assert.equal(c.user, undefined);
  });

  it('the LoRA model needs no loras', () => {
    assert.equal(normalize(lora()).model.id, LORA);
  });

  it('aliases resolve to the entry', () => {
    assert.equal(normalize({ model: 'fal-ai/z-image/turbo/lora', prompt: 'x' }).model.id, LORA);
  });
});

describe('required and optional params', () => {
  it('aimlapi dialect reaches fal as sent', () => {
    const c = normalize(
      lora({
        image_size: { width: 1536, height: 640 },
        num_images: 3,
        num_inference_steps: 4,
        seed: 42,
        output_format: 'webp',
        enable_safety_checker: false,
        enable_prompt_expansion: true,
        acceleration: 'high',
        loras: [{ path: 'https://huggingface.co/o/r/resolve/main/style.safetensors', scale: 0.8 }, { path: 'owner/repo' }],
      }),
    );
    assert.deepEqual(c.falInput, {
      prompt: 'a red fox in snow',
      image_size: { width: 1536, height: 640 },
      num_images: 3,
      output_format: 'webp',
      enable_safety_checker: false,
      enable_prompt_expansion: true,
      num_inference_steps: 4,
      seed: 42,
      acceleration: 'high',
      loras: [{ path: 'https://huggingface.co/o/r/resolve/main/style.safetensors', scale: 0.8 }, { path: 'owner/repo' }],
    });
    assert.equal(c.numImages, 3);
    assert.deepEqual(c.size, { width: 1536, height: 640 });
    assert.equal(c.outputFormat, 'webp');
    assert.equal(c.promptExpansion, true);
  });

  it('OpenAI dialect is mapped, and its own fields stay out of the fal input', () => {
    const c = normalize(
      turbo({
        n: 2,
        size: '1024x1536',
        response_format: 'b64_json',
        output_format: 'jpeg',
        user: 'end-user-7',
        quality: 'auto',
        style: null,
        background: 'auto',
        moderation: 'auto',
        output_compression: 100,
        partial_images: 0,
        stream: false,
        provider: 'FAL',
      }),
    );
    assert.deepEqual(c.falInput, {
      prompt: 'a red fox in snow',
      image_size: { width: 1024, height: 1536 },
      num_images: 2,
      output_format: 'jpeg',
      enable_safety_checker: true,
      enable_prompt_expansion: false,
    });
    assert.equal(c.numImages, 2);
    assert.deepEqual(c.size, { width: 1024, height: 1536 });
    assert.equal(c.responseFormat, 'b64_json');
    assert.equal(c.outputFormat, 'jpeg');
    assert.equal(c.user, 'end-user-7');
    assert.deepEqual(c.ignoredParams, ['quality', 'background', 'moderation', 'output_compression', 'partial_images']);
  });

  it('records which fields the caller sent, for mapping fal errors back to them', () => {
    assert.deepEqual([...normalize(turbo({ size: '1024x1024', n: 2 })).sentFields].sort(), ['model', 'n', 'prompt', 'size']);
  });

  it('never sends sync_mode, and refuses it from the caller', () => {
    assert.equal('sync_mode' in normalize(turbo({ response_format: 'b64_json' })).falInput, false);
    assert.equal(rejection(turbo({ sync_mode: true })).param, 'sync_mode');
  });

  it('copies values so later changes to the body cannot reach fal', () => {
    const loras = [{ path: 'owner/repo', scale: 1 }];
    const imageSize = { width: 512, height: 512 };
    const c = normalize(lora({ loras, image_size: imageSize }));
    loras[0]!.scale = 4;
    imageSize.width = 2048;
    assert.deepEqual(c.falInput['loras'], [{ path: 'owner/repo', scale: 1 }]);
    assert.deepEqual(c.falInput['image_size'], { width: 512, height: 512 });
  });
});

describe('sizes', () => {
  for (const preset of IMAGE_SIZE_PRESETS) {
    it(`preset ${preset} is sent by name and resolved to pixels`, () => {
      const c = normalize(turbo({ image_size: preset }));
      assert.equal(c.falInput['image_size'], preset);
      assert.deepEqual(c.size, IMAGE_SIZE_PRESET_PIXELS[preset]);
    });
  }
  const pixels: Array<[number, number]> = [
    [512, 512],
    [2048, 2048],
    [512, 2048],
    [1536, 640],
    [1024, 1024],
    [800, 1216],
    // OpenAI's named sizes that fit the model's limits
    [1536, 1024],
    [1024, 1536],
    [1792, 1024],
    [1024, 1792],
  ];
  for (const [width, height] of pixels) {
    it(`custom ${width}x${height} via image_size and via size`, () => {
      const a = normalize(turbo({ image_size: { width, height } }));
      const b = normalize(turbo({ size: `${width}x${height}` }));
      assert.deepEqual(a.falInput['image_size'], { width, height });
      assert.deepEqual(b.falInput['image_size'], { width, height });
      assert.deepEqual(a.size, { width, height });
      assert.deepEqual(b.size, { width, height });
    });
  }
  it('size "auto" leaves the default', () => {
    assert.equal(normalize(turbo({ size: 'auto' })).falInput['image_size'], 'landscape_4_3');
  });
  it('size null leaves the default', () => {
    assert.equal(normalize(turbo({ size: null })).falInput['image_size'], 'landscape_4_3');
  });
});

describe('the same setting in both dialects', () => {
  const equal: Array<[string, Record<string, unknown>, Partial<Pick<CanonicalRequest, 'numImages'>> & { image_size?: unknown }]> = [
    ['size 1024x1024 + image_size square_hd', { size: '1024x1024', image_size: 'square_hd' }, { image_size: 'square_hd' }],
    ['size 1024x768 + image_size landscape_4_3', { size: '1024x768', image_size: 'landscape_4_3' }, { image_size: 'landscape_4_3' }],
    ['size 512x512 + image_size square', { size: '512x512', image_size: 'square' }, { image_size: 'square' }],
    ['size matching a custom image_size', { size: '640x1536', image_size: { width: 640, height: 1536 } }, { image_size: { width: 640, height: 1536 } }],
    ['size auto + image_size', { size: 'auto', image_size: 'portrait_16_9' }, { image_size: 'portrait_16_9' }],
    ['n 2 + num_images 2', { n: 2, num_images: 2 }, { numImages: 2 }],
    ['n null + num_images 3', { n: null, num_images: 3 }, { numImages: 3 }],
    ['n 4 alone', { n: 4 }, { numImages: 4 }],
  ];
  for (const [name, extra, expected] of equal) {
    it(`accepts ${name}`, () => {
      const c = normalize(turbo(extra));
      if (expected.image_size !== undefined) assert.deepEqual(c.falInput['image_size'], expected.image_size);
      if (expected.numImages !== undefined) {
        assert.equal(c.numImages, expected.numImages);
        assert.equal(c.falInput['num_images'], expected.numImages);
      }
    });
  }
});

describe('values that change nothing are accepted, not sent and not declared', () => {
  const neutral: Array<[string, unknown[]]> = [
    ['quality', [null]],
    ['style', [null]],
    ['background', [null]],
    ['moderation', [null]],
    ['output_compression', [null]],
    ['partial_images', [null]],
    ['stream', [false, null]],
    ['response_format', ['url', null]],
    ['output_format', [null]],
    ['provider', ['fal', 'auto', 'Fal', 'AUTO']],
  ];
  for (const [field, values] of neutral) {
    for (const value of values) {
      it(`${field}: ${JSON.stringify(value)}`, () => {
        const c = normalize(turbo({ [field]: value }));
        assert.equal(field in c.falInput && field !== 'output_format', false);
        assert.deepEqual(c.falInput, normalize(turbo()).falInput);
        assert.deepEqual(c.ignoredParams, []);
      });
    }
  }
});

/**
 * Class 3 of the field policy: the hints of issue 20's list. LangChain's
 * DallEAPIWrapper sends style "vivid" and quality "standard" on every call;
 * each was a 400 before the policy existed.
 */
describe('hints: accepted, not sent, declared; refused under STRICT_PARAMS', () => {
  const hints: Array<[string, unknown[]]> = [
    ['style', ['vivid', 'natural']],
    ['quality', ['standard', 'hd', 'low', 'medium', 'high', 'auto']],
    ['background', ['auto']],
    ['moderation', ['auto', 'low']],
    ['output_compression', [0, 80, 100]],
    ['partial_images', [0, 2, 3]],
  ];
  it('covers every hint of the table', () => {
    const table = Object.entries(FIELD_RULES).filter(([, r]) => r.role === 'hint').map(([k]) => k).sort();
    assert.deepEqual(hints.map(([f]) => f).sort(), table);
  });
  for (const [field, values] of hints) {
    for (const value of values) {
      it(`${field}: ${JSON.stringify(value)} is ignored and declared`, () => {
        const c = normalize(turbo({ [field]: value }));
        assert.deepEqual(c.falInput, normalize(turbo()).falInput);
        assert.deepEqual(c.ignoredParams, [field]);
      });
      it(`${field}: ${JSON.stringify(value)} is a 400 naming it under STRICT_PARAMS`, () => {
        const e = rejection(turbo({ [field]: value }), true);
        assert.equal(e.status, 400);
        assert.equal(e.param, field);
        assert.equal(e.code, 'unsupported_parameter');
        assert.match(e.message, new RegExp(`^${field} ${JSON.stringify(value)} is not supported by alibaba/z-image-turbo: .*STRICT_PARAMS=true.*leave ${field} out or send null`));
      });
    }
  }
  it('lists several hints in the order sent, on every model', () => {
    assert.deepEqual(normalize(lora({ quality: 'hd', n: 2, style: 'vivid', moderation: 'low' })).ignoredParams, ['quality', 'style', 'moderation']);
  });
  it('STRICT_PARAMS leaves null and the honoured fields alone', () => {
    const c = normalizeRequest(registry, turbo({ quality: null, style: null, n: 2, size: '1024x1024', response_format: 'b64_json', user: 'u' }), { strictParams: true });
    assert.equal(c.numImages, 2);
    assert.deepEqual(c.ignoredParams, []);
  });
  it('partial_images 0 on a stream is honoured (no partial images), not declared', () => {
    assert.deepEqual(normalize(turbo({ stream: true, partial_images: 0 })).ignoredParams, []);
    assert.deepEqual(normalizeRequest(registry, turbo({ stream: true, partial_images: 0 }), { strictParams: true }).ignoredParams, []);
  });
  it('a model that declares one of the names as its own field takes it to fal (class 1)', () => {
    const schema = imageRequestSchema({
      title: 'test',
      description: 'Z-Image Turbo with a compression setting',
      fields: { ...falImageFields, output_compression: { type: 'integer', minimum: 1, maximum: 100 } },
    });
    const model = { ...zImageTurbo, id: 'test/compressing', aliases: [], requestSchema: schema };
    const r = createModelRegistry([model]);
    const c = normalizeRequest(r, { model: 'test/compressing', prompt: 'x', output_compression: 80, quality: 'hd' }, { strictParams: false });
    assert.equal(c.falInput['output_compression'], 80);
    assert.deepEqual(c.ignoredParams, ['quality']);
    assert.equal(rejectionIn(r, { model: 'test/compressing', prompt: 'x', output_compression: 0 }).param, 'output_compression');
  });
});

function rejectionIn(r: ReturnType<typeof createModelRegistry>, body: unknown): ApiError {
  try {
    normalizeRequest(r, body);
  } catch (e) {
    if (e instanceof ApiError) return e;
    throw e;
  }
  assert.fail(`expected a rejection of ${JSON.stringify(body)}`);
}

describe('stream', () => {
  it('true streams base64 and stays out of the fal input', () => {
    for (const responseFormat of [undefined, null, 'b64_json']) {
      const c = normalize(turbo({ stream: true, ...(responseFormat !== undefined ? { response_format: responseFormat } : {}) }));
      assert.equal(c.stream, true);
      assert.equal(c.responseFormat, 'b64_json');
      assert.deepEqual(c.falInput, normalize(turbo()).falInput);
    }
  });

  it('false or null do not stream', () => {
    assert.equal(normalize(turbo({ stream: false })).stream, false);
    assert.equal(normalize(turbo({ stream: null })).stream, false);
    assert.equal(normalize(turbo()).responseFormat, 'url');
  });
});

describe('accepted LoRA paths', () => {
  const paths = [
    'https://huggingface.co/owner/repo/resolve/main/lora.safetensors',
    'https://v3.fal.media/files/abc/lora.safetensors',
    'https://example.com:8443/weights?download=1',
    'https://civitai.com/api/download/models/12345',
    'owner/repo',
    'Tongyi-MAI/Z-Image-Turbo',
    'owner/repo/lora.safetensors',
    'owner/repo/sub/dir/my_lora-v1.2.safetensors',
  ];
  for (const path of paths) {
    it(path, () => assert.deepEqual(normalize(lora({ loras: [{ path }] })).falInput['loras'], [{ path }]));
  }
  it('three LoRAs with scales 0 and 4', () => {
    const loras = [{ path: 'a/b', scale: 0 }, { path: 'c/d', scale: 4 }, { path: 'e/f', scale: 2.5 }];
    assert.deepEqual(normalize(lora({ loras })).falInput['loras'], loras);
  });
});

describe('rejections name the param and say why', () => {
  const long = 'x'.repeat(4001);
  const cases: Array<[string, unknown, string | null, RegExp]> = [
    // body
    ['null body', null, null, /must be a JSON object/],
    ['array body', [turbo()], null, /must be a JSON object/],
    ['string body', '{"model":"x"}', null, /must be a JSON object/],
    ['number body', 5, null, /must be a JSON object/],
    // prompt
    ['missing prompt', { model: TURBO }, 'prompt', /^Missing required parameter: 'prompt'\.$/],
    ['empty prompt', turbo({ prompt: '' }), 'prompt', /^prompt must not be empty$/],
    ['whitespace prompt', turbo({ prompt: ' \n\t ' }), 'prompt', /prompt must contain at least one non-whitespace character/],
    ['prompt too long', turbo({ prompt: long }), 'prompt', /^prompt must be at most 4000 characters long \(got 4001\)$/],
    ['prompt a number', turbo({ prompt: 42 }), 'prompt', /^prompt must be a string \(got 42\)$/],
    ['prompt null', turbo({ prompt: null }), 'prompt', /prompt must be a string \(got null\)/],
    // image_size
    ['width not a multiple of 32', turbo({ image_size: { width: 1000, height: 1024 } }), 'image_size', /^image_size\.width must be a multiple of 32 \(got 1000\)$/],
    ['height not a multiple of 32', turbo({ image_size: { width: 1024, height: 1025 } }), 'image_size', /^image_size\.height must be a multiple of 32 \(got 1025\)$/],
    ['width too small', turbo({ image_size: { width: 256, height: 1024 } }), 'image_size', /^image_size\.width must be at least 512 \(got 256\)$/],
    ['height too large', turbo({ image_size: { width: 1024, height: 2080 } }), 'image_size', /^image_size\.height must be at most 2048 \(got 2080\)$/],
    ['fractional width', turbo({ image_size: { width: 512.5, height: 512 } }), 'image_size', /^image_size\.width must be an integer \(got 512\.5\)$/],
    ['negative width', turbo({ image_size: { width: -512, height: 512 } }), 'image_size', /image_size\.width must be at least 512 \(got -512\)/],
    ['width as a string', turbo({ image_size: { width: '1024', height: 1024 } }), 'image_size', /image_size\.width must be an integer \(got "1024"\)/],
    ['missing height', turbo({ image_size: { width: 1024 } }), 'image_size', /^image_size\.height is required$/],
    ['extra key in image_size', turbo({ image_size: { width: 1024, height: 1024, depth: 3 } }), 'image_size', /image_size: unrecognized field "depth" \(allowed: width, height\)/],
    ['__proto__ in image_size', turbo({ image_size: JSON.parse('{"width":1024,"height":1024,"__proto__":{"x":1}}') }), 'image_size', /unrecognized field "__proto__"/],
    ['unknown preset', turbo({ image_size: 'square_xl' }), 'image_size', /image_size must be one of "square_hd", .* \(got "square_xl"\)/],
    ['preset in the wrong case', turbo({ image_size: 'Square_HD' }), 'image_size', /image_size must be one of/],
    ['image_size a number', turbo({ image_size: 1024 }), 'image_size', /image_size must be one of "square_hd", .*"landscape_16_9" or an object \{width, height\} \(got 1024\)/],
    ['image_size null', turbo({ image_size: null }), 'image_size', /\(got null\)/],
    ['image_size an array', turbo({ image_size: [1024, 1024] }), 'image_size', /image_size must be/],
    // size
    ['size not WxH', turbo({ size: 'large' }), 'size', /size must be "auto" or "WIDTHxHEIGHT"/],
    ['size with spaces', turbo({ size: '1024 x 1024' }), 'size', /size must be "auto" or "WIDTHxHEIGHT"/],
    ['size upper-case X', turbo({ size: '1024X1024' }), 'size', /size must be "auto"/],
    ['size 256x256', turbo({ size: '256x256' }), 'size', /^size "256x256": width must be at least 512 \(got 256\)$/],
    ['size 0512x512', turbo({ size: '0512x512' }), 'size', /size must be "auto" or "WIDTHxHEIGHT"/],
    ['size 1024x', turbo({ size: '1024x' }), 'size', /size must be "auto" or "WIDTHxHEIGHT"/],
    ['size 1000x1024', turbo({ size: '1000x1024' }), 'size', /^size "1000x1024": width must be a multiple of 32 \(got 1000\)$/],
    ['size 1024x4096', turbo({ size: '1024x4096' }), 'size', /^size "1024x4096": height must be at most 2048 \(got 4096\)$/],
    ['size a number', turbo({ size: 1024 }), 'size', /size must be a string or null \(got 1024\)/],
    ['size conflicting with image_size', turbo({ size: '1024x1024', image_size: 'square' }), 'size', /size "1024x1024" and image_size "square" \(512x512\) disagree/],
    ['size conflicting with custom image_size', turbo({ size: '1024x1024', image_size: { width: 1024, height: 1056 } }), 'size', /and image_size \{width: 1024, height: 1056\} disagree/],
    ['size conflicting with the orientation', turbo({ size: '768x1024', image_size: 'landscape_4_3' }), 'size', /disagree/],
    // counts
    ['n = 11 (past OpenAI maximum)', turbo({ n: 11 }), 'n', /^n must be at most 10 \(got 11\); alibaba\/z-image-turbo makes at most 10 images per request$/],
    ['num_images = 5 (one job at most)', turbo({ num_images: 5 }), 'num_images', /num_images must be at most 4 \(got 5\).*per job/],
    ['n = 0', turbo({ n: 0 }), 'n', /^n must be at least 1 \(got 0\)$/],
    ['n fractional', turbo({ n: 1.5 }), 'n', /^n must be an integer or null \(got 1\.5\)$/],
    ['n a string', turbo({ n: '2' }), 'n', /n must be an integer or null \(got "2"\)/],
    ['num_images = 5', lora({ num_images: 5 }), 'num_images', /num_images must be at most 4 \(got 5\); alibaba\/z-image-turbo-lora makes at most 4/],
    ['num_images = 0', turbo({ num_images: 0 }), 'num_images', /num_images must be at least 1 \(got 0\)/],
    ['num_images negative', turbo({ num_images: -1 }), 'num_images', /at least 1 \(got -1\)/],
    ['num_images null', turbo({ num_images: null }), 'num_images', /num_images must be an integer \(got null\)/],
    ['n and num_images disagree', turbo({ n: 2, num_images: 3 }), 'n', /^n \(2\) and num_images \(3\) disagree; send one of them$/],
    // steps, seed
    ['steps 0', turbo({ num_inference_steps: 0 }), 'num_inference_steps', /at least 1 \(got 0\)/],
    ['steps 9', turbo({ num_inference_steps: 9 }), 'num_inference_steps', /num_inference_steps must be at most 8 \(got 9\)/],
    ['steps fractional', turbo({ num_inference_steps: 4.5 }), 'num_inference_steps', /must be an integer \(got 4\.5\)/],
    ['seed 0', turbo({ seed: 0 }), 'seed', /^seed must be at least 1 \(got 0\)$/],
    ['seed negative', turbo({ seed: -7 }), 'seed', /seed must be at least 1/],
    ['seed fractional', turbo({ seed: 1.5 }), 'seed', /seed must be an integer \(got 1\.5\)/],
    ['seed beyond 2^53-1', turbo({ seed: 2 ** 53 }), 'seed', /seed must be at most 9007199254740991/],
    ['seed a string', turbo({ seed: '42' }), 'seed', /seed must be an integer \(got "42"\)/],
    // enums and booleans
    ['output_format gif', turbo({ output_format: 'gif' }), 'output_format', /output_format must be one of "jpeg", "png", "webp" or null \(got "gif"\)/],
    ['output_format jpg', turbo({ output_format: 'jpg' }), 'output_format', /got "jpg"/],
    ['output_format upper case', turbo({ output_format: 'PNG' }), 'output_format', /got "PNG"/],
    ['response_format png', turbo({ response_format: 'png' }), 'response_format', /response_format must be one of "url", "b64_json" or null \(got "png"\)/],
    ['safety checker as a string', turbo({ enable_safety_checker: 'false' }), 'enable_safety_checker', /must be a boolean \(got "false"\)/],
    ['prompt expansion as 1', turbo({ enable_prompt_expansion: 1 }), 'enable_prompt_expansion', /must be a boolean \(got 1\)/],
    ['acceleration turbo', turbo({ acceleration: 'turbo' }), 'acceleration', /acceleration must be one of "none", "regular" or "high" \(got "turbo"\)/],
    ['user a number', turbo({ user: 12 }), 'user', /user must be a string \(got 12\)/],
    ['user too long', turbo({ user: 'u'.repeat(257) }), 'user', /user must be at most 256 characters long \(got 257\)/],
    // values the model cannot honour
    ['background transparent', turbo({ background: 'transparent' }), 'background', /^background "transparent" is not supported by alibaba\/z-image-turbo: this model has no background control, .*Accepted: "auto" or null$/],
    ['background opaque', lora({ background: 'opaque' }), 'background', /^background "opaque" is not supported by alibaba\/z-image-turbo-lora: this model has no background control/],
    ['quality ultra', turbo({ quality: 'ultra' }), 'quality', /quality must be one of "auto", "standard", "hd", "low", "medium", "high" or null \(got "ultra"\)/],
    ['style a number', turbo({ style: 1 }), 'style', /style must be one of "vivid", "natural" or null \(got 1\)/],
    ['moderation high', turbo({ moderation: 'high' }), 'moderation', /moderation must be one of "auto", "low" or null/],
    ['output_compression 101', turbo({ output_compression: 101 }), 'output_compression', /^output_compression must be at most 100 \(got 101\)$/],
    ['output_compression a string', turbo({ output_compression: '80' }), 'output_compression', /output_compression must be an integer or null/],
    ['partial_images 4', turbo({ partial_images: 4 }), 'partial_images', /^partial_images must be at most 3 \(got 4\)$/],
    ['partial_images 2 on a stream', turbo({ partial_images: 2, stream: true }), 'partial_images', /^partial_images 2 is not supported by alibaba\/z-image-turbo with stream: true: this model makes no partial images/],
    ['stream a string', turbo({ stream: 'yes' }), 'stream', /stream must be/],
    ['stream with response_format url', turbo({ stream: true, response_format: 'url' }), 'response_format', /response_format "url" cannot be streamed.*b64_json/],
    // provider
    ['provider alibaba', turbo({ provider: 'alibaba' }), 'provider', /provider "alibaba" is not available: this service generates every image with fal/],
    ['provider Alibaba', turbo({ provider: 'ALIBABA' }), 'provider', /provider "ALIBABA" is not available/],
    ['provider replicate', turbo({ provider: 'replicate' }), 'provider', /provider must be one of "alibaba", "fal", "auto" \(case-insensitive\) \(got "replicate"\)/],
    ['provider on the LoRA model', lora({ provider: 'fal' }), 'provider', /^provider is not supported by alibaba\/z-image-turbo-lora; it is accepted by alibaba\/z-image-turbo$/],
    // loras
    ['loras on the turbo model', turbo({ loras: [{ path: 'owner/repo' }] }), 'loras', /^loras is not supported by alibaba\/z-image-turbo; it is accepted by alibaba\/z-image-turbo-lora$/],
    ['empty loras on the turbo model', turbo({ loras: [] }), 'loras', /loras is not supported by alibaba\/z-image-turbo/],
    ['four LoRAs', lora({ loras: [{ path: 'a/b' }, { path: 'c/d' }, { path: 'e/f' }, { path: 'g/h' }] }), 'loras', /^loras\[3\]: at most 3 LoRAs are allowed \(got 4\)$/],
    ['loras not an array', lora({ loras: { path: 'a/b' } }), 'loras', /loras must be an array/],
    ['lora without path', lora({ loras: [{ scale: 1 }] }), 'loras', /^loras\[0\]\.path is required$/],
    ['lora path a number', lora({ loras: [{ path: 5 }] }), 'loras', /loras\[0\]\.path must be a string \(got 5\)/],
    ['lora scale too high', lora({ loras: [{ path: 'a/b' }, { path: 'c/d', scale: 4.5 }] }), 'loras', /^loras\[1\]\.scale must be at most 4 \(got 4\.5\)$/],
    ['lora scale negative', lora({ loras: [{ path: 'a/b', scale: -1 }] }), 'loras', /loras\[0\]\.scale must be at least 0 \(got -1\)/],
    ['lora scale a string', lora({ loras: [{ path: 'a/b', scale: '1' }] }), 'loras', /loras\[0\]\.scale must be a number/],
    ['lora with an extra key', lora({ loras: [{ path: 'a/b', weight_name: 'x' }] }), 'loras', /loras\[0\]: unrecognized field "weight_name" \(allowed: path, scale\)/],
    ['lora item a string', lora({ loras: ['owner/repo'] }), 'loras', /loras\[0\] must be an object/],
    // unknown fields and prototype keys
    ['one unknown field', turbo({ foo: 1 }), 'foo', /^Unrecognized request argument supplied: foo$/],
    ['a flood of unknown fields', turbo(Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`f${i}`, i]))), 'f0', /^Unrecognized request arguments supplied: f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, and 4990 more$/],
    ['several unknown fields', turbo({ foo: 1, bar: 2 }), 'foo', /^Unrecognized request arguments supplied: foo, bar$/],
    ['guidance_scale (another model family)', turbo({ guidance_scale: 3.5 }), 'guidance_scale', /Unrecognized request argument supplied: guidance_scale/],
    ['__proto__', JSON.parse(`{"model":"${TURBO}","prompt":"x","__proto__":{"admin":true}}`), '__proto__', /^Unrecognized request argument supplied: __proto__$/],
    ['constructor', JSON.parse(`{"model":"${TURBO}","prompt":"x","constructor":{"prototype":{"x":1}}}`), 'constructor', /Unrecognized request argument supplied: constructor/],
    ['prototype', turbo({ prototype: {} }), 'prototype', /Unrecognized request argument supplied: prototype/],
    ['a weird field name', turbo({ 'a b\n': 1 }), 'a b\n', /Unrecognized request argument supplied: "a b\\n"/],
  ];
  for (const [name, body, param, message] of cases) {
    it(`${name} → 400 param ${String(param)}`, () => {
      const e = rejection(body);
      assert.equal(e.status, 400, e.message);
      assert.equal(e.type, 'invalid_request_error');
      // OpenAI clients branch on code: a field the model does not know at all is the only special case.
      assert.equal(e.code, /^Unrecognized request argument/.test(e.message) ? 'unknown_parameter' : 'invalid_value');
      assert.equal(e.param, param, e.message);
      assert.match(e.message, message);
    });
  }

  it('never touches Object.prototype', () => {
    rejection(JSON.parse(`{"model":"${TURBO}","prompt":"x","__proto__":{"polluted":true}}`));
    rejection(lora({ loras: [JSON.parse('{"path":"a/b","__proto__":{"polluted":true}}')] }));
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  });
});

describe('model lookup comes first: 404 whatever else is wrong', () => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['unknown model', { model: 'dall-e-3', prompt: 'x' }],
    ['unknown model, no prompt', { model: 'dall-e-3' }],
    ['unknown model, everything wrong', { model: 'dall-e-3', prompt: 5, n: 99, size: 'huge', foo: 1, loras: 'x' }],
    ['missing model', { prompt: 'x' }],
    ['missing model, unknown fields', { prompt: 'x', foo: 1 }],
    ['model a number', { model: 5, prompt: 'x' }],
    ['model null', { model: null, prompt: 'x' }],
    ['model with other case', { model: 'Alibaba/Z-Image-Turbo', prompt: 'x' }],
    ['model with trailing space', { model: `${TURBO} `, prompt: 'x' }],
    ['model prefix', { model: 'alibaba/z-image', prompt: 'x' }],
    ['model with a suffix', { model: `${TURBO}-v2`, prompt: 'x' }],
    ['bare model name', { model: 'z-image-turbo', prompt: 'x' }],
    ['model "constructor"', { model: 'constructor', prompt: 'x' }],
    ['model "__proto__"', { model: '__proto__', prompt: 'x' }],
    ['unknown model with a __proto__ key', JSON.parse('{"model":"nope","__proto__":{"x":1}}') as Record<string, unknown>],
  ];
  for (const [name, body] of cases) {
    it(name, () => {
      const e = rejection(body);
      assert.equal(e.status, 404);
      assert.equal(e.code, 'model_not_found');
      assert.equal(e.param, 'model');
    });
  }
  it("names the models served, so a client's default (dall-e-3) tells the caller what to send", () => {
    assert.equal(
      rejection({ model: 'dall-e-3', prompt: 'x' }).message,
      `The model "dall-e-3" does not exist. This service serves: ${TURBO}, ${LORA} (GET /v1/models lists them).`,
    );
  });
});
