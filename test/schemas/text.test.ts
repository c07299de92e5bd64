import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { ADMIN_KEY, startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { compileInput } from '../../src/schemas/ajv.js';
import { describeValidationErrors } from '../../src/schemas/describe-error.js';
import { firstUnstorable, STORABLE_TEXT, withStorableText } from '../../src/schemas/text.js';
import { createKeyRequestSchema, keyPathSchema, updateKeyRequestSchema, usageQuerySchema } from '../../src/schemas/index.js';
import { modelCatalog } from '../../src/models/registry.js';

/**
 * Text neither database can store as sent: PostgreSQL refuses U+0000 in a
 * text column, and both drivers turn an unpaired surrogate into U+FFFD, so
 * what is stored is not what was sent. Each is the caller's 400 naming the
 * field, on every route and both databases alike; never a 503 that looks
 * like an outage and invites retries.
 */
const UNSTORABLE: ReadonlyArray<readonly [string, string]> = [
  ['a NUL', 'a\u0000b'],
  ['a lone high surrogate', 'a\ud800b'],
  ['a lone low surrogate', 'a\udc00'],
  ['a surrogate pair reversed', '\udc00\ud800'],
];

describe('firstUnstorable', () => {
  const table: ReadonlyArray<readonly [string, { index: number; codePoint: string } | undefined]> = [
    ['', undefined],
    ['plain text', undefined],
    ['\u0001\u001f\u007f controls, \ufeff BOM, \ufffe\uffff noncharacters, \u{10ffff}', undefined],
    ['a pair \ud83d\ude00 is one character', undefined],
    ['\u0000', { index: 0, codePoint: 'U+0000' }],
    ['ab\u0000', { index: 2, codePoint: 'U+0000' }],
    ['\ud800', { index: 0, codePoint: 'U+D800' }],
    ['x\udfff', { index: 1, codePoint: 'U+DFFF' }],
    ['\ud83d\ude00\ud83d', { index: 2, codePoint: 'U+D83D' }],
    ['\ude00\ud83d reversed', { index: 0, codePoint: 'U+DE00' }],
    [`${'y'.repeat(70_000)}\u0000`, { index: 70_000, codePoint: 'U+0000' }],
  ];
  for (const [text, expected] of table) {
    it(`${JSON.stringify(text.slice(0, 40))} → ${JSON.stringify(expected)}`, () => {
      assert.deepEqual(firstUnstorable(text), expected);
    });
  }
});

describe('withStorableText', () => {
  it('adds the keyword to every subschema that accepts a string, without touching the original', () => {
    const schema = {
      type: 'object',
      properties: {
        a: { type: 'string' },
        b: { type: ['number', 'string', 'null'] },
        c: { enum: ['x', null] },
        d: { type: 'array', items: { type: 'object', properties: { e: { type: 'string' } } } },
        f: { anyOf: [{ type: 'string', maxLength: 9 }, { type: 'integer' }, { type: 'string', enum: ['p'] }] },
      },
    } as const;
    const before = JSON.stringify(schema);
    const out = withStorableText(schema) as unknown as { properties: Record<string, Record<string, unknown>> };
    assert.equal(JSON.stringify(schema), before);
    assert.equal(out.properties['a']![STORABLE_TEXT], true);
    assert.equal(out.properties['b']![STORABLE_TEXT], true);
    assert.equal(out.properties['c']![STORABLE_TEXT], undefined, 'enum values are ours');
    assert.equal((out.properties['d'] as { items: { properties: { e: Record<string, unknown> } } }).items.properties.e[STORABLE_TEXT], true);
    const branches = (out.properties['f'] as { anyOf: Array<Record<string, unknown>> }).anyOf;
    assert.deepEqual(branches.map((b) => b[STORABLE_TEXT]), [true, undefined, undefined]);
  });
});

/**
 * Every schema that validates caller input, with a minimal valid instance:
 * each of its top-level fields that takes a string is refused, named, when
 * the string holds a NUL, and by this rule whenever the same text without
 * the NUL is accepted.
 */
const INPUT_SCHEMAS: ReadonlyArray<readonly [string, { properties: Record<string, object> }, Record<string, unknown>]> = [
  ...modelCatalog.map((m) => [`${m.id} request`, m.requestSchema as unknown as { properties: Record<string, object> }, { model: m.id, prompt: 'a cat' }] as const),
  ['create key', createKeyRequestSchema, { name: 'n' }],
  ['update key', updateKeyRequestSchema, {}],
  ['usage query', usageQuerySchema, {}],
  ['key path', keyPathSchema, { id: 'k' }],
];

function takesString(s: Record<string, unknown>): boolean {
  const t = s['type'];
  if (t === 'string' || (Array.isArray(t) && t.includes('string'))) return true;
  return Array.isArray(s['anyOf']) && (s['anyOf'] as Array<Record<string, unknown>>).some(takesString);
}

describe('every string field of every input schema', () => {
  for (const [name, schema, base] of INPUT_SCHEMAS) {
    it(name, () => {
      const validate = compileInput(schema);
      assert.ok(validate(base), `the base instance is valid: ${JSON.stringify(validate.errors)}`);
      const fields = Object.entries(schema.properties).filter(([, s]) => takesString(s as Record<string, unknown>)).map(([f]) => f);
      assert.ok(fields.length > 0);
      for (const field of fields) {
        assert.equal(validate({ ...base, [field]: 'a\u0000b' }), false, field);
        assert.equal(describeValidationErrors(validate.errors).param, field);
        if (validate({ ...base, [field]: 'ab' })) {
          assert.equal(validate({ ...base, [field]: 'a\ud800b' }), false, field);
          assert.equal(validate.errors?.[0]?.keyword, STORABLE_TEXT, field);
        }
      }
      if ('loras' in schema.properties) {
        assert.equal(validate({ ...base, loras: [{ path: 'owner/repo' }, { path: 'https://example.com/\u0000' }] }), false);
        const f = describeValidationErrors(validate.errors);
        assert.deepEqual([f.param, f.path, f.keyword], ['loras', 'loras[1].path', STORABLE_TEXT]);
      }
    });
  }
});

const user = { Authorization: `Bearer ${TEST_KEY}` };
const admin = { Authorization: `Bearer ${ADMIN_KEY}` };

function assertRefused(res: request.Response, param: string): void {
  assert.equal(res.status, 400, `${res.status} ${res.text}`);
  assert.equal(res.body.error.type, 'invalid_request_error');
  assert.equal(res.body.error.param, param);
  assert.match(res.body.error.message, /U\+0000|unpaired surrogate/);
  assert.equal(res.headers['retry-after'], undefined);
}

describeEachDialect('unstorable text is the caller’s 400 on every route', (ctx) => {
  let t: TestService;
  let issuedId: string;
  before(async () => {
    t = await startTestService(await serviceEnv(await ctx.storage()), { imageMode: 'cheap' });
    const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name: 'text test' });
    assert.equal(created.status, 201, created.text);
    issuedId = String(created.body.id);
  });
  after(async () => {
    await t?.close();
  });

  const images = (body: Record<string, unknown>) => request(t.url).post('/v1/images/generations').set(user).send(body);

  for (const [what, text] of UNSTORABLE) {
    it(`image requests: ${what} in user, prompt or a LoRA path; nothing reaches fal`, async () => {
      const jobsBefore = t.emulator.jobs().length;
      assertRefused(await images({ model: 'alibaba/z-image-turbo', prompt: 'a cat', user: text }), 'user');
      assertRefused(await images({ model: 'alibaba/z-image-turbo', prompt: `a cat ${text}` }), 'prompt');
      assertRefused(await images({ model: 'alibaba/z-image-turbo-lora', prompt: 'a cat', loras: [{ path: `https://example.com/${text}.safetensors` }] }), 'loras');
      assert.equal(t.emulator.jobs().length, jobsBefore, 'no fal job was made');
    });

    it(`admin keys: ${what} in a name, on create and on update`, async () => {
      assertRefused(await request(t.url).post('/v1/admin/keys').set(admin).send({ name: text }), 'name');
      assertRefused(await request(t.url).patch(`/v1/admin/keys/${issuedId}`).set(admin).send({ name: text }), 'name');
      const after = await request(t.url).get(`/v1/admin/keys/${issuedId}`).set(admin);
      assert.equal(after.body.name, 'text test', 'the stored name is unchanged');
    });
  }

  // A query string or a path carries bytes: %00 decodes to NUL, while a
  // percent-encoded surrogate is not UTF-8 and decodes to U+FFFD.
  it('usage queries: NUL in model or key_id', async () => {
    assertRefused(await request(t.url).get('/v1/usage?model=a%00b').set(user), 'model');
    assertRefused(await request(t.url).get('/v1/usage?key_id=%00').set(user), 'key_id');
    assertRefused(await request(t.url).get('/v1/admin/usage?model=%00').set(admin), 'model');
    assertRefused(await request(t.url).get('/v1/admin/usage?key_id=k%00&format=csv').set(admin), 'key_id');
  });

  it('admin key ids in the path: NUL', async () => {
    assertRefused(await request(t.url).get('/v1/admin/keys/a%00b').set(admin), 'id');
    assertRefused(await request(t.url).patch('/v1/admin/keys/%00').set(admin).send({ enabled: false }), 'id');
    assertRefused(await request(t.url).delete('/v1/admin/keys/%00').set(admin), 'id');
  });

  it('nothing of the above was logged as an error', () => {
    const errors = t.logs.filter((l) => Number(l['level']) >= 50);
    assert.deepEqual(errors.map((l) => l['msg']), []);
  });

  it('storable text around the edges is accepted and stored as sent', async () => {
    const name = 'ключ \u{1F511} \uffff\ufeff\u0001 end';
    const created = await request(t.url).post('/v1/admin/keys').set(admin).send({ name });
    assert.equal(created.status, 201, created.text);
    const got = await request(t.url).get(`/v1/admin/keys/${String(created.body.id)}`).set(admin);
    assert.equal(got.body.name, name);
    const res = await images({ model: 'alibaba/z-image-turbo', prompt: 'a cat \u{1F408}', user: 'ユーザー \u{1F600}' });
    assert.equal(res.status, 200, res.text);
  });
});

describe('header values that are stored', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
  });
  after(async () => {
    await t?.close();
  });

  it('an Idempotency-Key outside printable ASCII is a 400 naming it; an odd x-request-id is replaced, not stored', async () => {
    // Node's HTTP parser refuses NUL in any header itself; a Latin-1 byte is what a header can still carry.
    const res = await request(t.url).post('/v1/images/generations').set(user).set('Idempotency-Key', 'key-\u00ff').send({ model: 'alibaba/z-image-turbo', prompt: 'a cat' });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.body.error.param, 'Idempotency-Key');
    const odd = await request(t.url).post('/v1/images/generations').set(user).set('x-request-id', 'req-\u00ff-12345678').send({ model: 'alibaba/z-image-turbo', prompt: 'a cat' });
    assert.equal(odd.status, 200, odd.text);
    assert.match(String(odd.headers['x-request-id']), /^req_[0-9a-f]{32}$/);
  });
});
