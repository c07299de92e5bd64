import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DallEAPIWrapper } from '@langchain/openai';
import sharp from 'sharp';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * LangChain JS's image tool, `DallEAPIWrapper` from `@langchain/openai`,
 * unchanged and with its defaults: given only our model name, it sends
 * `n: 1, size: "1024x1024", response_format: "url", style: "vivid",
 * quality: "standard"` on every call. Before the field policy the service
 * answered each with 400 (style), so the tool could not make one image.
 * The wrapper reads `baseUrl`, not `configuration.baseURL`.
 */
const MODEL = 'alibaba/z-image-turbo';

interface Exchange {
  body: Record<string, unknown>;
  status: number;
  headers: Headers;
}

/**
 * A loopback proxy in front of the service that records what the wrapper
 * sends and what it is answered, so the test sees the wire without changing
 * the client.
 */
async function recordingProxy(target: string): Promise<{ url: string; seen: Exchange[]; close: () => Promise<void> }> {
  const seen: Exchange[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !['host', 'content-length', 'connection'].includes(k))) as Record<string, string>;
      void fetch(`${target}${req.url}`, { method: req.method, headers, body: body.length > 0 ? body : undefined }).then(async (answer) => {
        const bytes = Buffer.from(await answer.arrayBuffer());
        seen.push({ body: body.length > 0 ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {}, status: answer.status, headers: answer.headers });
        const out = Object.fromEntries([...answer.headers].filter(([k]) => !['content-length', 'content-encoding', 'transfer-encoding', 'connection'].includes(k)));
        res.writeHead(answer.status, { ...out, 'content-length': bytes.length }).end(bytes);
      }, (err: unknown) => res.destroy(err as Error));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function decoded(bytes: Buffer): Promise<[string | undefined, number | undefined, number | undefined]> {
  const meta = await sharp(bytes).metadata();
  return [meta.format, meta.width, meta.height];
}

describe("LangChain's DallEAPIWrapper against the service", () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  it('url mode with its defaults: it sends style and quality, which are declared ignored, and gets a fetchable 1024x1024 image', async () => {
    const proxy = await recordingProxy(t.url);
    try {
      const tool = new DallEAPIWrapper({ apiKey: TEST_KEY, baseUrl: `${proxy.url}/v1`, model: MODEL });
      const url = (await tool.invoke('a lighthouse on a cliff')) as string;
      assert.equal(proxy.seen.length, 1);
      const [sent] = proxy.seen;
      assert.deepEqual(sent!.body, { model: MODEL, prompt: 'a lighthouse on a cliff', n: 1, size: '1024x1024', response_format: 'url', style: 'vivid', quality: 'standard' });
      assert.equal(sent!.status, 200);
      assert.equal(sent!.headers.get('x-ignored-params'), 'style, quality');
      assert.ok(url.startsWith(`${t.url}/v1/files/`), url);
      const res = await fetch(url);
      assert.equal(res.status, 200);
      assert.deepEqual(await decoded(Buffer.from(await res.arrayBuffer())), ['png', 1024, 1024]);
    } finally {
      await proxy.close();
    }
  });

  it('b64_json mode: bare base64 of the requested size', async () => {
    const tool = new DallEAPIWrapper({ apiKey: TEST_KEY, baseUrl: `${t.url}/v1`, model: MODEL, responseFormat: 'b64_json', size: '1792x1024' });
    const b64 = (await tool.invoke('a fox in the snow')) as string;
    assert.doesNotMatch(b64, /^data:/);
    assert.deepEqual(await decoded(Buffer.from(b64, 'base64')), ['png', 1792, 1024]);
  });

  it('n: 2 makes two requests and returns both images', async () => {
    const tool = new DallEAPIWrapper({ apiKey: TEST_KEY, baseUrl: `${t.url}/v1`, model: MODEL, n: 2, responseFormat: 'b64_json' });
    const images = (await tool.invoke('two kites')) as unknown as Array<{ image_url: { url: string } }>;
    assert.equal(images.length, 2);
    for (const image of images) assert.deepEqual(await decoded(Buffer.from(image.image_url.url, 'base64')), ['png', 1024, 1024]);
  });

  it("its default model, dall-e-3, is a 404 naming the models served (names are exact)", async () => {
    const tool = new DallEAPIWrapper({ apiKey: TEST_KEY, baseUrl: `${t.url}/v1` });
    await assert.rejects(tool.invoke('x'), (err: Error & { status?: number }) => {
      assert.equal(err.status, 404);
      assert.match(err.message, /"dall-e-3" does not exist\. This service serves: .*alibaba\/z-image-turbo/);
      return true;
    });
  });
});

describe("LangChain's DallEAPIWrapper against a service with STRICT_PARAMS=true", () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({ STRICT_PARAMS: 'true' }, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  it('its defaults are a 400 naming the first hint', async () => {
    const tool = new DallEAPIWrapper({ apiKey: TEST_KEY, baseUrl: `${t.url}/v1`, model: MODEL });
    await assert.rejects(tool.invoke('x'), (err: Error & { status?: number; param?: string; code?: string }) => {
      assert.equal(err.status, 400);
      assert.equal(err.param, 'style');
      assert.equal(err.code, 'unsupported_parameter');
      assert.match(err.message, /STRICT_PARAMS=true/);
      return true;
    });
  });

  it('a value that would change what is delivered is refused whatever the setting', async () => {
    const res = await fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'x', background: 'transparent' }),
    });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: { param: string } }).error.param, 'background');
  });
});
