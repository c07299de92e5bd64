import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import SwaggerParser from '@apidevtools/swagger-parser';
import type { ValidateFunction } from 'ajv';
import { ajv } from '../../src/schemas/ajv.js';
import { ADMIN_KEY, startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * Live answers of `POST /v1/images/generations` checked against the response
 * schemas openapi.yaml declares for them, after swagger-parser has resolved
 * every `$ref` (the schema files included): a 200 with URLs, a 200 with
 * base64, every error status the document lists, and each kind of stream
 * event. What the document says is what a client receives.
 *
 * The schemas are compiled by the service's own Ajv instance
 * (src/schemas/ajv.ts): strict, as the service is, so a schema the service
 * could not compile cannot be documented either.
 */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PATH = '/v1/images/generations';
const MODEL = 'alibaba/z-image-turbo';

interface Answer {
  status: number;
  contentType: string;
  headers: Headers;
  text: string;
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${url}${PATH}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, contentType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(), headers: res.headers, text: await res.text() };
}

/** The `data:` of each event of a finished SSE body, with its event name. */
function sseEvents(text: string): Array<{ event: string; data: unknown }> {
  return text
    .split('\n\n')
    .map((block) => block.split('\n'))
    .filter((lines) => lines.some((l) => l.startsWith('event: ')))
    .map((lines) => ({
      event: lines.find((l) => l.startsWith('event: '))!.slice(7),
      data: JSON.parse(lines.find((l) => l.startsWith('data: '))!.slice(6)) as unknown,
    }));
}

describe('live answers match the response schemas of openapi.yaml', () => {
  let t: TestService;
  let responses: Record<string, { content?: Record<string, { schema: object }> }>;
  const compiled = new Map<object, ValidateFunction>();
  const exercised = new Set<string>();

  /** Validates `body` against the schema the document declares for this status and media type. */
  function check(a: Answer, body: unknown, where: string): void {
    const declared = responses[String(a.status)];
    assert.ok(declared, `${where}: status ${a.status} is not declared for POST ${PATH}`);
    const media = declared.content?.[a.contentType];
    assert.ok(media, `${where}: ${a.status} ${a.contentType} is not declared (declared: ${Object.keys(declared.content ?? {}).join(', ')})`);
    let validate = compiled.get(media.schema);
    if (!validate) {
      validate = ajv.compile(media.schema);
      compiled.set(media.schema, validate);
    }
    assert.ok(validate(body), `${where}: the ${a.status} answer does not match its documented schema: ${JSON.stringify(validate.errors)}\n${JSON.stringify(body).slice(0, 400)}`);
    exercised.add(String(a.status));
  }

  function checkJson(a: Answer, where: string, status: number): Record<string, any> {
    assert.equal(a.status, status, `${where}: ${a.text.slice(0, 300)}`);
    const body = JSON.parse(a.text) as Record<string, any>;
    check(a, body, where);
    return body;
  }

  before(async () => {
    const api = (await SwaggerParser.validate(join(ROOT, 'openapi.yaml'))) as { paths: Record<string, any> };
    responses = api.paths[PATH].post.responses;
    // A 1 s deadline for the 504, a 1 KiB body limit for the 413; everything else is at its default.
    t = await startTestService({ REQUEST_TIMEOUT_MS: '1000', MAX_BODY_BYTES: '1024' }, { latencyMs: 20, imageMode: 'cheap' });
  });
  after(async () => {
    await t?.close();
  });

  it('200 with url images', async () => {
    const body = checkJson(await post(t.url, { model: MODEL, prompt: 'a contract kite' }), '200 url', 200);
    assert.ok(typeof body.data[0].url === 'string');
  });

  it('200 with b64_json images, and with ignored hints declared', async () => {
    const a = await post(t.url, { model: MODEL, prompt: 'a contract boat', response_format: 'b64_json', n: 2, style: 'vivid', quality: 'standard' });
    const body = checkJson(a, '200 b64_json', 200);
    assert.equal(body.data.length, 2);
    assert.ok(typeof body.data[0].b64_json === 'string');
    assert.deepEqual(body.meta.ignored_params, ['style', 'quality']);
    assert.equal(a.headers.get('x-ignored-params'), 'style, quality');
    assert.ok(responses['200']!.content!['application/json'] && (responses['200'] as any).headers['x-ignored-params'], 'x-ignored-params is documented');
  });

  it('the stream: progress and completed events, each data line as documented', async () => {
    const a = await post(t.url, { model: MODEL, prompt: 'a contract stream', stream: true, n: 2, quality: 'hd' });
    assert.equal(a.status, 200);
    assert.equal(a.headers.get('x-ignored-params'), 'quality');
    const events = sseEvents(a.text);
    assert.deepEqual([...new Set(events.map((e) => e.event))], ['image_generation.progress', 'image_generation.completed']);
    for (const e of events) check(a, e.data, `event ${e.event}`);
    assert.deepEqual((events.at(-1)!.data as any).meta.ignored_params, ['quality']);
  });

  it('the stream: an error event, as documented', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', status: 500, prompt_contains: 'contract broken stream' });
    const a = await post(t.url, { model: MODEL, prompt: 'contract broken stream', stream: true });
    assert.equal(a.status, 200);
    const last = sseEvents(a.text).at(-1)!;
    assert.equal(last.event, 'error');
    check(a, last.data, 'event error');
  });

  it('400, 401, 404, 409, 413, 415 before fal is called', async () => {
    checkJson(await post(t.url, { model: MODEL, prompt: 'x', background: 'transparent' }), '400', 400);
    checkJson(await post(t.url, { model: MODEL, prompt: 'x' }, { authorization: 'Bearer sk-not-a-key-0000000000' }), '401', 401);
    checkJson(await post(t.url, { model: 'dall-e-3', prompt: 'x' }), '404', 404);
    const id = `contract-${Date.now()}`;
    checkJson(await post(t.url, { model: MODEL, prompt: 'first use of an id' }, { 'x-request-id': id }), '200 before the 409', 200);
    checkJson(await post(t.url, { model: MODEL, prompt: 'second use of an id' }, { 'x-request-id': id }), '409', 409);
    checkJson(await post(t.url, { model: MODEL, prompt: 'p'.repeat(2000) }), '413', 413);
    checkJson(await post(t.url, 'a plain text body', { 'content-type': 'text/plain' }), '415', 415);
  });

  it('429 insufficient_quota for a key whose budget is spent', async () => {
    const created = await fetch(`${t.url}/v1/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'contract: no budget', budget_usd: '0' }),
    });
    assert.equal(created.status, 201);
    const { key } = (await created.json()) as { key: string };
    const body = checkJson(await post(t.url, { model: MODEL, prompt: 'x' }, { authorization: `Bearer ${key}` }), '429', 429);
    assert.equal(body.error.code, 'insufficient_quota');
  });

  it('502 and 504 from fal', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', status: 500, prompt_contains: 'contract broken json' });
    checkJson(await post(t.url, { model: MODEL, prompt: 'contract broken json' }), '502', 502);
    t.emulator.armFault({ kind: 'never_finish', prompt_contains: 'contract endless' });
    checkJson(await post(t.url, { model: MODEL, prompt: 'contract endless' }), '504', 504);
  });

  // Last: the service's ledger is closed for good.
  it('503 when metering is unavailable', async () => {
    await t.service.database.close();
    checkJson(await post(t.url, { model: MODEL, prompt: 'x' }), '503', 503);
  });

  it('every status the document declares was answered and checked', () => {
    assert.deepEqual([...exercised].sort(), Object.keys(responses).sort());
  });
});
