import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/** The unchanged openai SDK, pointed at the listening service: the compatibility proof. */
describe('openai SDK against the service', () => {
  let t: TestService;
  let client: OpenAI;
  before(async () => {
    t = await startTestService();
    client = new OpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await t.close();
  });

  it('images.generate with only the required params returns a fetchable URL', async () => {
    const res = await client.images.generate({ model: 'alibaba/z-image-turbo', prompt: 'a green kite' });
    assert.equal(typeof res.created, 'number');
    assert.equal(res.data?.length, 1);
    const url = res.data![0]!.url!;
    const bytes = Buffer.from(await (await fetch(url)).arrayBuffer());
    const meta = await sharp(bytes).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 1024, 768]);
    const extra = res as unknown as { meta: { usage: { credits_used: number } } };
    assert.equal(extra.meta.usage.credits_used, 10000);
  });

  it('images.generate with required and optional params (b64_json, n, size, neutral values)', async () => {
    const res = await client.images.generate({
      model: 'alibaba/z-image-turbo',
      prompt: 'two boats',
      n: 2,
      size: '1024x1024',
      response_format: 'b64_json',
      output_format: 'jpeg',
      quality: 'auto',
      background: 'auto',
      moderation: 'auto',
      user: 'user-42',
    });
    assert.equal(res.data?.length, 2);
    for (const d of res.data!) {
      const meta = await sharp(Buffer.from(d.b64_json!, 'base64')).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 1024, 1024]);
    }
  });

  it('raises BadRequestError naming the param', async () => {
    await assert.rejects(
      client.images.generate({ model: 'alibaba/z-image-turbo', prompt: 'x', background: 'transparent' }),
      (err: unknown) => {
        assert.ok(err instanceof OpenAI.BadRequestError, String(err));
        assert.equal(err.status, 400);
        assert.equal(err.param, 'background');
        assert.match(err.requestID ?? '', /^req_/);
        return true;
      },
    );
  });

  it('raises AuthenticationError for a wrong key', async () => {
    const bad = new OpenAI({ apiKey: 'sk-wrong-wrong-wrong-wrong', baseURL: `${t.url}/v1`, maxRetries: 0 });
    await assert.rejects(bad.images.generate({ model: 'alibaba/z-image-turbo', prompt: 'x' }), OpenAI.AuthenticationError);
  });

  it('raises NotFoundError for an unknown model', async () => {
    await assert.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'x' }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.NotFoundError);
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, 'model');
      return true;
    });
  });
});
