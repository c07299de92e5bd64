import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import AjvModule from 'ajv';
import SwaggerParser from '@apidevtools/swagger-parser';
import { startTestService } from '../helpers/service.js';

/**
 * openapi.yaml references the schemas in schemas/ instead of restating them;
 * here every example in it is validated against the schema it illustrates,
 * so the document cannot drift from what the service enforces.
 */
const Ajv = AjvModule.default ?? AjvModule;
const root = new URL('../../', import.meta.url).pathname;
const doc = parse(readFileSync(join(root, 'openapi.yaml'), 'utf8')) as Record<string, any>;
const ajv = new Ajv({ allErrors: true, strict: false });
for (const f of readdirSync(join(root, 'schemas'))) {
  if (f.endsWith('.json')) ajv.addSchema(JSON.parse(readFileSync(join(root, 'schemas', f), 'utf8')), `schemas/${f}`);
}

function resolve(node: any): any {
  if (node && typeof node.$ref === 'string' && node.$ref.startsWith('#/')) {
    return resolve(node.$ref.slice(2).split('/').reduce((o: any, k: string) => o?.[k], doc));
  }
  return node;
}

/** Turns an OpenAPI schema node into something ajv can compile. */
function compileSchema(schema: any) {
  if (schema.$ref?.startsWith('./schemas/')) return ajv.getSchema(schema.$ref.slice(2))!;
  const rewritten = JSON.parse(JSON.stringify(schema), (_k, v) =>
    v && typeof v === 'object' && typeof v.$ref === 'string' && v.$ref.startsWith('#/') ? resolve(v) : v,
  );
  for (const key of ['anyOf', 'oneOf'] as const) {
    if (Array.isArray(rewritten[key])) {
      const parts = rewritten[key].map((s: any) => (s.$ref?.startsWith('./schemas/') ? { $ref: s.$ref.slice(2) } : s));
      return ajv.compile({ [key]: parts });
    }
  }
  return ajv.compile(rewritten);
}

interface Example {
  where: string;
  schema: any;
  value: unknown;
}

function collectExamples(): Example[] {
  const out: Example[] = [];
  // Webhooks are operations we send rather than serve; their examples are held to the same schemas.
  const operations = [...Object.entries<any>(doc.paths), ...Object.entries<any>(doc.webhooks ?? {}).map(([name, item]) => [`webhook ${name}`, item] as const)];
  for (const [path, item] of operations) {
    for (const [method, op] of Object.entries<any>(item)) {
      const contents: Array<[string, any]> = [];
      if (op.requestBody) contents.push([`${method} ${path} request`, op.requestBody.content]);
      for (const [status, r] of Object.entries<any>(op.responses ?? {})) contents.push([`${method} ${path} ${status}`, resolve(r).content]);
      for (const [where, content] of contents) {
        for (const [type, media] of Object.entries<any>(content ?? {})) {
          if (!media?.schema) continue;
          if (media.example !== undefined) out.push({ where: `${where} ${type}`, schema: media.schema, value: media.example });
          for (const [name, ex] of Object.entries<any>(media.examples ?? {})) {
            out.push({ where: `${where} ${type} (${name})`, schema: media.schema, value: resolve(ex).value });
          }
        }
      }
    }
  }
  return out;
}

describe('openapi.yaml', () => {
  const examples = collectExamples();

  it('has examples to check', () => {
    assert.ok(examples.length >= 10, `found ${examples.length}`);
  });

  for (const ex of examples) {
    it(`example is valid: ${ex.where}`, () => {
      const validate = compileSchema(ex.schema);
      const ok = validate(ex.value);
      assert.ok(ok, JSON.stringify(validate.errors));
    });
  }

  it('the example check can fail: a body without prompt is refused by the request schema', () => {
    const body = doc.paths['/v1/images/generations'].post.requestBody.content['application/json'];
    const validate = compileSchema(body.schema);
    assert.equal(validate({ model: 'alibaba/z-image-turbo' }), false);
    assert.equal(validate({ model: 'alibaba/z-image-turbo', prompt: 'x', image_size: { width: 1000, height: 1024 } }), false);
  });

  it('every schemas/*.json file is referenced', () => {
    const text = readFileSync(join(root, 'openapi.yaml'), 'utf8');
    for (const f of readdirSync(join(root, 'schemas'))) {
      if (f.endsWith('.json')) assert.ok(text.includes(`./schemas/${f}`), `${f} is not referenced by openapi.yaml`);
    }
  });

  it('documents the billing webhook, and its example check can fail', () => {
    const body = doc.webhooks?.['usage.settled']?.post?.requestBody?.content?.['application/json'];
    assert.ok(body, 'webhooks.usage.settled is missing');
    assert.ok(examples.some((e) => e.where.startsWith('post webhook usage.settled')), 'the webhook example is not collected');
    const validate = compileSchema(body.schema);
    assert.equal(validate({ ...body.example, data: { ...body.example.data, charge_usd: 0.005 } }), false);
  });

  it('documents every route the app serves (read from the running app’s router)', async () => {
    const t = await startTestService({ FAL_WEBHOOKS: 'true', PUBLIC_BASE_URL: 'http://127.0.0.1:1' });
    try {
      const served = new Set<string>();
      const walk = (stack: any[]) => {
        for (const layer of stack ?? []) {
          if (layer.route?.path && typeof layer.route.path === 'string') served.add(layer.route.path);
          if (layer.handle?.stack) walk(layer.handle.stack);
        }
      };
      walk((t.service.app as any).router.stack);
      const asOpenApi = (p: string) => p.replace(/:(\w+)/g, '{$1}').replace(/\*(\w+)/g, '{$1}');
      const documented = new Set(Object.keys(doc.paths));
      assert.ok(served.size >= 8, `found ${served.size} routes`);
      for (const p of served) {
        const path = asOpenApi(p);
        // `/v1/models/{id}` is documented under its parameter's public name.
        const alias = path === '/v1/models/{id}' ? '/v1/models/{model}' : path;
        assert.ok(documented.has(path) || documented.has(alias), `${p} is served but not in openapi.yaml`);
      }
    } finally {
      await t.close();
    }
  });
});

/**
 * The document is held to the OpenAPI 3.1 schema by a real validator
 * (@apidevtools/swagger-parser, the one code generators and API gateways
 * build on), with every `$ref` resolved: code generators and gateways that
 * import the spec stop at the first error. A copy with a known defect shows
 * that the check can fail.
 */
describe('openapi.yaml is valid OpenAPI 3.1', () => {
  it('the file, with its ./schemas references resolved', async () => {
    const api = (await SwaggerParser.validate(join(root, 'openapi.yaml'))) as { openapi: string };
    assert.equal(api.openapi, '3.1.0');
  });

  it('the document the service serves, reading /openapi.yaml and its /schemas/ over HTTP', async () => {
    const t = await startTestService();
    try {
      // The resolver refuses loopback URLs unless told they are safe: this one is the service under test.
      const api = (await SwaggerParser.validate(`${t.url}/openapi.yaml`, { resolve: { http: { safeUrlResolver: false } } })) as { paths: Record<string, any> };
      const images = api.paths['/v1/images/generations'].post.responses['200'].content['application/json'].schema;
      assert.equal(images.title, 'Images response', 'the schema came from /schemas/images-response.json');
    } finally {
      await t.close();
    }
  });

  /** A copy of the document and its schemas in a temporary directory, changed by `mutate`. */
  async function brokenCopy(mutate: (dir: string, text: string) => Promise<string>): Promise<{ file: string; dispose: () => Promise<void> }> {
    const dir = await mkdtemp(join(tmpdir(), 'openapi-broken-'));
    await cp(join(root, 'schemas'), join(dir, 'schemas'), { recursive: true });
    const file = join(dir, 'openapi.yaml');
    await writeFile(file, await mutate(dir, await readFile(join(root, 'openapi.yaml'), 'utf8')));
    return { file, dispose: () => rm(dir, { recursive: true, force: true }) };
  }

  /** `text` with `from` replaced by `to`; `from` must be there, or the copy would not be broken at all. */
  const swap = (text: string, from: string, to: string): string => {
    assert.ok(text.includes(from), `openapi.yaml no longer contains ${JSON.stringify(from)}`);
    return text.replace(from, to);
  };
  const broken: Array<[string, (dir: string, text: string) => Promise<string>, RegExp]> = [
    [
      'a description on a media type (the defect issue 20 found)',
      async (_dir, text) => swap(text, '            text/event-stream:\n', "            text/event-stream:\n              description: One event's data.\n"),
      /text~1event-stream must NOT have unevaluated properties/,
    ],
    [
      'a response without its description',
      async (_dir, text) => swap(text, "        '200':\n          description: |\n            The images, with usage", "        '200':\n          summary: |\n            The images, with usage"),
      /must have required property 'description'/,
    ],
    [
      'a $ref to a schema file that is not there',
      async (dir, text) => {
        await rm(join(dir, 'schemas', 'images-response.json'));
        return text;
      },
      /images-response\.json/,
    ],
  ];
  for (const [name, mutate, expected] of broken) {
    it(`refuses a broken copy: ${name}`, async () => {
      const copy = await brokenCopy(mutate);
      try {
        await assert.rejects(SwaggerParser.validate(copy.file), (err: Error) => {
          assert.match(err.message, expected);
          return true;
        });
      } finally {
        await copy.dispose();
      }
    });
  }
});
