import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { ConfigError, loadConfig } from '../../src/config.js';
import {
  createModelRegistry,
  createServedModelRegistry,
  modelCatalog,
  priceCatalog,
  zImageBase,
  type ModelEntry,
} from '../../src/models/index.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * The price-configuration rule: a model whose price no source confirms
 * (Z-Image Base) is served only when MODEL_PRICES prices it, and otherwise
 * left out with a start-up line saying why; never billed at $0.
 */

function capture() {
  const lines: Array<{ level: 'info' | 'warn'; obj: Record<string, unknown>; msg: string }> = [];
  return {
    lines,
    log: {
      info: (obj: object, msg: string) => void lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
      warn: (obj: object, msg: string) => void lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
    },
  };
}

describe('pricing the catalog', () => {
  it('leaves an unconfirmed model out, logging why and how to serve it', () => {
    const { lines, log } = capture();
    const registry = createServedModelRegistry({ catalog: modelCatalog, prices: {}, log });
    assert.equal(registry.lookup('alibaba/z-image-base'), undefined);
    assert.equal(registry.lookup('fal-ai/z-image/base'), undefined);
    assert.equal(registry.lookup('alibaba/z-image-base-lora'), undefined);
    assert.ok(registry.lookup('flux/dev'));
    const warned = lines.filter((l) => l.level === 'warn');
    assert.deepEqual(warned.map((l) => l.obj['model']), ['alibaba/z-image-turbo (inpaint)', 'alibaba/z-image-turbo-lora (inpaint)', 'alibaba/z-image-base', 'alibaba/z-image-base-lora']);
    assert.match(warned[0]!.msg, /^model alibaba\/z-image-turbo \(inpaint\) is not served: .*MODEL_PRICES='\{"fal-ai\/z-image\/turbo\/inpaint":"<USD per unit>"\}'$/);
    assert.deepEqual(registry.capabilities(registry.lookup('alibaba/z-image-turbo')!), ['generations', 'edits']);
    assert.match(warned[2]!.msg, /^model alibaba\/z-image-base is not served: fal's price for Z-Image Base is not confirmed.*MODEL_PRICES='\{"alibaba\/z-image-base":"<USD per unit>"\}'$/);
    assert.equal(lines.filter((l) => l.level === 'info').length, 0);
  });

  it('serves it at the configured price, by id or by alias, keeping the declared unit and rounding', () => {
    const { lines, log } = capture();
    const registry = createServedModelRegistry({
      catalog: modelCatalog,
      prices: { 'alibaba/z-image-base': { rateUsd: '0.012' }, 'fal-ai/z-image/base/lora': { rateUsd: '0.02', megapixelPixels: 1_000_000 } },
      log,
    });
    assert.deepEqual(registry.lookup('alibaba/z-image-base')?.pricing, { unit: 'megapixel', rateUsd: '0.012', megapixelPixels: 1_048_576, rounding: 'ceil_per_image' });
    assert.deepEqual(registry.lookup('alibaba/z-image-base-lora')?.pricing, { unit: 'megapixel', rateUsd: '0.02', megapixelPixels: 1_000_000, rounding: 'ceil_per_image' });
    assert.deepEqual(
      registry.list().map((m) => m.id),
      modelCatalog.map((m) => m.id),
      'catalog order kept',
    );
    assert.deepEqual(lines.filter((l) => l.level === 'info').map((l) => [l.level, l.obj['model']]), [['info', 'alibaba/z-image-base'], ['info', 'alibaba/z-image-base-lora']]);
  });

  it('serves an edit endpoint only once its price is configured, by its fal endpoint id', () => {
    const registry = createServedModelRegistry({ catalog: modelCatalog, prices: { 'fal-ai/z-image/turbo/inpaint': { rateUsd: '0.006' } } });
    const turbo = registry.lookup('alibaba/z-image-turbo')!;
    assert.deepEqual(registry.capabilities(turbo), ['generations', 'edits', 'inpaint']);
    assert.equal(registry.edit(turbo, 'inpaint')?.pricing.rateUsd, '0.006');
    assert.equal(registry.edit(turbo, 'inpaint')?.endpoint, 'fal-ai/z-image/turbo/inpaint');
    assert.equal(registry.edit(turbo, 'image_to_image')?.pricing.rateUsd, '0.005');
    assert.equal(registry.forEndpoint('alibaba/z-image-turbo', 'fal-ai/z-image/turbo/inpaint'), registry.edit(turbo, 'inpaint'));
    assert.equal(registry.forEndpoint('alibaba/z-image-turbo', 'fal-ai/z-image/turbo'), turbo);
    assert.equal(registry.edit(registry.lookup('alibaba/z-image-turbo-lora')!, 'inpaint'), undefined);
    assert.equal(registry.edit(registry.lookup('flux/dev')!, 'image_to_image'), undefined);
  });

  it('replaces a published price when configured', () => {
    const registry = createServedModelRegistry({ catalog: modelCatalog, prices: { 'flux/dev': { rateUsd: '0.03' } } });
    assert.equal(registry.lookup('flux/dev')?.pricing.rateUsd, '0.03');
    assert.equal(registry.lookup('flux/schnell')?.pricing.rateUsd, '0.003');
  });

  const refusals: Array<[string, Record<string, object>, RegExp]> = [
    ['an unknown model name', { 'alibaba/z-image-bse': { rateUsd: '0.01' } }, /MODEL_PRICES names "alibaba\/z-image-bse", which is not a model of this service/],
    ['a "__proto__" name', JSON.parse('{"__proto__":{"rateUsd":"0.01"}}') as Record<string, object>, /MODEL_PRICES names "__proto__"/],
    ['one model under two names', { 'alibaba/z-image-base': { rateUsd: '0.01' }, 'fal-ai/z-image/base': { rateUsd: '0.02' } }, /prices alibaba\/z-image-base twice/],
    ['a rule without the missing rate', { 'alibaba/z-image-base': { rounding: 'exact' } }, /MODEL_PRICES for alibaba\/z-image-base has no rateUsd/],
    ['a zero rate (would bill $0)', { 'alibaba/z-image-base': { rateUsd: '0' } }, /alibaba\/z-image-base: pricing.rateUsd must be greater than 0/],
    ['a broken unit', { 'flux/dev': { unit: 'token' } }, /flux\/dev: pricing.unit/],
  ];
  for (const [name, prices, message] of refusals) {
    it(`stops start-up on ${name}`, () => assert.throws(() => createServedModelRegistry({ catalog: modelCatalog, prices }), message));
  }

  it('refuses an unconfirmed entry handed to the registry directly', () => {
    assert.throws(() => createModelRegistry([zImageBase as unknown as ModelEntry]), /alibaba\/z-image-base: has no confirmed price .*configure one in MODEL_PRICES/);
  });

  it('reports what it served, left out and priced from configuration', () => {
    const p = priceCatalog(modelCatalog, { 'alibaba/z-image-base': { rateUsd: '0.01' } });
    assert.deepEqual(p.unserved.map((m) => [m.id, m.endpoint]), [
      ['alibaba/z-image-turbo (inpaint)', 'fal-ai/z-image/turbo/inpaint'],
      ['alibaba/z-image-turbo-lora (inpaint)', 'fal-ai/z-image/turbo/inpaint/lora'],
      ['alibaba/z-image-base-lora', 'fal-ai/z-image/base/lora'],
    ]);
    assert.deepEqual(p.configured.map((m) => m.id), ['alibaba/z-image-base']);
    assert.equal(p.served.length, modelCatalog.length - 1);
  });
});

describe('MODEL_PRICES (configuration)', () => {
  const load = (value: string) => loadConfig({ MODEL_PRICES: value });
  const problems = (value: string): string => {
    try {
      load(value);
    } catch (e) {
      if (e instanceof ConfigError) return e.problems.join('\n');
      throw e;
    }
    assert.fail(`MODEL_PRICES=${value} was accepted`);
  };

  it('is empty when unset', () => assert.deepEqual(loadConfig({}).modelPrices, {}));

  it('takes a bare decimal string as the rate, or a partial rule', () => {
    assert.deepEqual(load('{"alibaba/z-image-base":"0.01","flux/dev":{"rateUsd":"0.03","rounding":"exact"}}').modelPrices, {
      'alibaba/z-image-base': { rateUsd: '0.01' },
      'flux/dev': { rateUsd: '0.03', rounding: 'exact' },
    });
  });

  const bad: Array<[string, RegExp]> = [
    ['not json', /MODEL_PRICES must be a JSON object.*not valid JSON/],
    ['["0.01"]', /MODEL_PRICES must be a JSON object/],
    ['{"flux/dev":0.03}', /MODEL_PRICES\["flux\/dev"\] must be a decimal string such as "0.01" or an object/],
    ['{"flux/dev":{"rateUsd":0.03}}', /MODEL_PRICES\["flux\/dev"\]\.rateUsd must be a decimal string/],
    ['{"flux/dev":"-1"}', /rateUsd must be a decimal string/],
    ['{"flux/dev":{"rate":"0.03"}}', /MODEL_PRICES\["flux\/dev"\] has unknown fields: rate/],
    ['{"flux/dev":{"rateUsd":"0.03","rounding":"round"}}', /rounding must be one of ceil_per_image, exact/],
    ['{"flux/dev":{"rateUsd":"0.03","unit":"token"}}', /unit must be one of megapixel, image, request/],
    ['{"flux/dev":{"rateUsd":"0.03","megapixelPixels":0}}', /megapixelPixels must be a positive integer/],
  ];
  for (const [value, message] of bad) {
    it(`refuses ${value}`, () => assert.match(problems(value), message));
  }

  it('keeps a "__proto__" name as a name, for the registry to refuse', () => {
    const prices = load('{"__proto__":"0.01"}').modelPrices;
    assert.equal(Object.getPrototypeOf(prices), Object.prototype);
    assert.deepEqual(Object.keys(prices), ['__proto__']);
  });
});

describe('through the service', () => {
  const auth = { Authorization: `Bearer ${TEST_KEY}` };

  describe('without MODEL_PRICES', () => {
    let t: TestService;
    before(async () => {
      t = await startTestService({ LOG_LEVEL: 'info' });
    });
    after(async () => {
      await t.close();
    });

    it('answers Z-Image Base with 404 model_not_found, unbilled', async () => {
      for (const name of ['alibaba/z-image-base', 'fal-ai/z-image/base/lora']) {
        const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: name, prompt: 'a fox' });
        assert.equal(res.status, 404, name);
        assert.equal(res.body.error.code, 'model_not_found');
        assert.equal(res.body.error.param, 'model');
      }
      assert.equal(t.emulator.billing().length, 0);
    });

    it('does not list it, and says why at start-up', async () => {
      const list = await request(t.url).get('/v1/models').set(auth);
      assert.equal(list.status, 200);
      const ids = (list.body.data as Array<{ id: string }>).map((m) => m.id);
      assert.ok(!ids.includes('alibaba/z-image-base') && !ids.includes('alibaba/z-image-base-lora'), ids.join());
      assert.ok(ids.includes('flux/schnell') && ids.includes('flux/dev') && ids.includes('blackforestlabs/flux-2-lora'), ids.join());
      assert.equal((await request(t.url).get('/v1/models/alibaba/z-image-base').set(auth)).status, 404);
      const line = t.logs.find((l) => l['model'] === 'alibaba/z-image-base' && typeof l['msg'] === 'string' && /not served/.test(l['msg'] as string));
      assert.ok(line, 'a start-up line names the model');
      assert.equal(line['level'], 40);
    });
  });

  describe('with MODEL_PRICES', () => {
    let t: TestService;
    before(async () => {
      t = await startTestService({ MODEL_PRICES: '{"alibaba/z-image-base":"0.012"}' });
    });
    after(async () => {
      await t.close();
    });

    it('serves Z-Image Base and bills it at the configured price', async () => {
      const res = await request(t.url).post('/v1/images/generations').set(auth).send({ model: 'alibaba/z-image-base', prompt: 'a fox', image_size: 'square_hd' });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      // 1024x1024 = 1 MP × $0.012.
      assert.equal(res.body.meta.usage.cost_usd, '0.012000');
      const m = await request(t.url).get('/v1/models/alibaba/z-image-base').set(auth);
      assert.equal(m.status, 200);
      assert.equal(m.body.pricing.usd_per_unit, '0.012');
      // Only the model that was priced: its LoRA sibling still has none.
      assert.equal((await request(t.url).get('/v1/models/alibaba/z-image-base-lora').set(auth)).status, 404);
    });
  });
});
