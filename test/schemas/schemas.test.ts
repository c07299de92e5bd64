import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { errorResponse, invalidRequest, modelNotFound, upstreamError, type ErrorType } from '../../src/errors.js';
import { EMITTED_SCHEMAS, schemaFileText, type ErrorResponseBody, type ImagesResponse } from '../../src/schemas/index.js';

const schemasDir = fileURLToPath(new URL('../../schemas/', import.meta.url));
const REEMIT = 'run `npx tsx scripts/emit-schemas.ts` to re-emit schemas/ from src/schemas/';

// Compile-time: the schema's error types and errors.ts's ErrorType are the same set.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const errorTypesAgree: Equal<ErrorResponseBody['error']['type'], ErrorType> = true;

function ajvFor(schema: object) {
  return new Ajv({ strict: true, allErrors: true, allowUnionTypes: true }).compile(schema);
}

function fileSchema(file: string): object {
  return JSON.parse(readFileSync(join(schemasDir, file), 'utf8')) as object;
}

describe('schemas/*.json are emitted from src/schemas', () => {
  for (const { file, schema } of EMITTED_SCHEMAS) {
    it(`schemas/${file} equals its module`, () => {
      let text: string;
      try {
        text = readFileSync(join(schemasDir, file), 'utf8');
      } catch {
        assert.fail(`schemas/${file} is missing: ${REEMIT}`);
      }
      assert.deepEqual(JSON.parse(text), JSON.parse(JSON.stringify(schema)), `schemas/${file} is out of date: ${REEMIT}`);
      assert.equal(text, schemaFileText(schema), `schemas/${file} is not formatted as emitted: ${REEMIT}`);
    });
  }

  it('holds no JSON file that is not emitted', () => {
    const emitted = new Set(EMITTED_SCHEMAS.map((s) => s.file));
    const stray = readdirSync(schemasDir).filter((f) => f.endsWith('.json') && !emitted.has(f));
    assert.deepEqual(stray, [], `not emitted by src/schemas/index.ts (delete them or add them there, then ${REEMIT})`);
  });

  for (const { file } of EMITTED_SCHEMAS) {
    it(`schemas/${file} compiles in strict Ajv`, () => {
      assert.doesNotThrow(() => ajvFor(fileSchema(file)));
    });
  }
});

describe('error-response.json', () => {
  const validate = ajvFor(fileSchema('error-response.json'));
  const cases: Array<[string, unknown]> = [
    ['400 with param', invalidRequest('bad', 'n')],
    ['400 without param', invalidRequest('bad', null)],
    ['404 model', modelNotFound('x')],
    ['502', upstreamError()],
    ['unknown error → 500', new Error('boom')],
  ];
  for (const [name, err] of cases) {
    it(`describes errorResponse() for ${name}`, () => {
      const body = errorResponse(err).body;
      assert.ok(validate(body), JSON.stringify(validate.errors));
    });
  }
  it('type-level agreement with errors.ts', () => assert.equal(errorTypesAgree, true));
});

describe('images-response.json', () => {
  const validate = ajvFor(fileSchema('images-response.json'));
  const ok: ImagesResponse = {
    created: 1_764_201_600,
    data: [{ url: 'https://v3.fal.media/files/x.png' }, { b64_json: 'iVBORw0KGgo=', revised_prompt: 'a cat, detailed' }],
    output_format: 'png',
    size: '1024x768',
    meta: {
      usage: { credits_used: 10500, tokens_used: 10500, cost_usd: '0.005250' },
      seed: 42,
      images: [{ width: 1024, height: 768, content_type: 'image/png', has_nsfw_concept: false }],
      request_id: 'req_5b0c2f6a9d3e4f1a8b7c6d5e4f3a2b1c',
      fal_request_id: 'req-1',
      fal_request_ids: ['req-1'],
    },
  };
  it('accepts a full response', () => assert.ok(validate(ok), JSON.stringify(validate.errors)));

  const bad: Array<[string, (r: Record<string, unknown>) => void]> = [
    ['an item with neither url nor b64_json', (r) => ((r['data'] as unknown[])[0] = {})],
    ['an item with both url and b64_json', (r) => ((r['data'] as unknown[])[0] = { url: 'u', b64_json: 'b' })],
    ['cost_usd as a float', (r) => (((r['meta'] as Record<string, Record<string, unknown>>)['usage'] ?? {})['cost_usd'] = 0.00525)],
    ['cost_usd with 2 decimals', (r) => (((r['meta'] as Record<string, Record<string, unknown>>)['usage'] ?? {})['cost_usd'] = '0.01')],
    ['fractional credits', (r) => (((r['meta'] as Record<string, Record<string, unknown>>)['usage'] ?? {})['credits_used'] = 1.5)],
    ['no meta', (r) => delete r['meta']],
    ['no created', (r) => delete r['created']],
    ['an unknown top-level field', (r) => (r['extra'] = 1)],
  ];
  for (const [name, mutate] of bad) {
    it(`refuses ${name}`, () => {
      const r = structuredClone(ok) as unknown as Record<string, unknown>;
      mutate(r);
      assert.equal(validate(r), false);
    });
  }
});
