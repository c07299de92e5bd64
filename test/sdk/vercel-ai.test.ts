import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { APICallError, generateImage } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * The Vercel AI SDK (`ai` with `@ai-sdk/openai`), unchanged, pointed at the
 * listening service. Its OpenAI image model always asks for `b64_json` for a
 * model whose name is not OpenAI's gpt-image family, and makes one call per
 * image for a model it does not know (n: 2 is two requests).
 */
describe('Vercel AI SDK against the service', () => {
  let t: TestService;
  let provider: ReturnType<typeof createOpenAI>;
  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
    provider = createOpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1` });
  });
  after(async () => {
    await t.close();
  });

  it('generateImage with only the required params gives a decodable image at the model default size', async () => {
    const { image, responses } = await generateImage({ model: provider.image('alibaba/z-image-turbo'), prompt: 'a green kite', maxRetries: 0 });
    const meta = await sharp(Buffer.from(image.uint8Array)).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 1024, 768]);
    assert.equal(image.mediaType, 'image/png');
    assert.equal(responses[0]!.headers?.['x-ignored-params'], undefined, 'nothing was ignored');
  });

  it('generateImage with n, size and OpenAI hints: images of the requested size, hints declared', async () => {
    const { images, responses } = await generateImage({
      model: provider.image('alibaba/z-image-turbo'),
      prompt: 'two paper boats',
      n: 2,
      size: '1024x1024',
      providerOptions: { openai: { quality: 'hd', style: 'natural', outputFormat: 'jpeg' } },
      maxRetries: 0,
    });
    assert.equal(images.length, 2);
    for (const image of images) {
      const meta = await sharp(Buffer.from(image.uint8Array)).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 1024, 1024]);
    }
    assert.equal(responses.length, 2, 'one call per image');
    for (const r of responses) assert.equal(r.headers?.['x-ignored-params'], 'quality, style');
  });

  it('a value that would change what is delivered is an APICallError 400 naming the field', async () => {
    await assert.rejects(
      generateImage({ model: provider.image('alibaba/z-image-turbo'), prompt: 'x', providerOptions: { openai: { background: 'transparent' } }, maxRetries: 0 }),
      (err: unknown) => {
        assert.ok(APICallError.isInstance(err), String(err));
        assert.equal(err.statusCode, 400);
        assert.match(err.message, /background "transparent" is not supported/);
        assert.equal((JSON.parse(err.responseBody ?? '{}') as { error: { param: string } }).error.param, 'background');
        return true;
      },
    );
  });

  it('an unknown model is a 404 naming the models served', async () => {
    await assert.rejects(generateImage({ model: provider.image('dall-e-3'), prompt: 'x', maxRetries: 0 }), (err: unknown) => {
      assert.ok(APICallError.isInstance(err), String(err));
      assert.equal(err.statusCode, 404);
      assert.match(err.message, /"dall-e-3" does not exist\. This service serves: .*alibaba\/z-image-turbo/);
      return true;
    });
  });
});
