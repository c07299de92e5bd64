/**
 * src/app.ts with in-memory fakes (test/helpers/fakes.ts): the middleware
 * order and the error policy, driven through supertest with no emulator,
 * database or Redis. Each test builds its own app.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { ApiError, upstreamError } from '../src/errors.js';
import { assertMatchesSchema } from './helpers/schemas.js';
import {
  ADMIN_KEY,
  MODEL,
  USER,
  USER_KEY,
  cannedOutcome,
  fakeApp,
  fakeAuthenticate,
  fakeImageService,
  memoryLogger,
} from './helpers/fakes.js';

const auth = { Authorization: `Bearer ${USER_KEY}` };
const REQUEST_ID = /^req_[0-9a-f]{32}$/;

function errorOf(res: request.Response): { message: string; type: string; param: string | null; code: string } {
  assert.match(String(res.headers['content-type']), /^application\/json/);
  const e = (res.body as { error?: Record<string, unknown> }).error;
  assert.ok(e, `an error envelope: ${res.text}`);
  assert.deepEqual(Object.keys(res.body as object), ['error']);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.param === null || typeof e.param === 'string');
  return e as { message: string; type: string; param: string | null; code: string };
}

/** The events of a Server-Sent Events body, data parsed; comments (keep-alives) left out. */
function sseEvents(text: string): Array<{ event: string; data: Record<string, unknown> }> {
  return text
    .split('\n\n')
    .filter((block) => block.trim() !== '' && !block.startsWith(':'))
    .map((block) => {
      const field = (name: string) => block.split('\n').find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
      return { event: field('event') ?? '', data: JSON.parse(field('data') ?? 'null') as Record<string, unknown> };
    });
}

describe('app: request ids', () => {
  it('every answer carries x-request-id: success, refusals, errors and unknown routes', async () => {
    const app = fakeApp();
    const answers = await Promise.all([
      request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' }),
      request(app).post('/v1/images/generations').send({ model: MODEL, prompt: 'a kite' }),
      request(app).post('/v1/images/generations').set(auth).send({ model: 'no/such-model', prompt: 'a kite' }),
      request(app).get('/v1/nothing-here'),
      request(app).get('/healthz'),
    ]);
    assert.deepEqual(answers.map((r) => r.status), [200, 401, 404, 404, 200]);
    for (const r of answers) assert.match(String(r.headers['x-request-id']), REQUEST_ID);
    assert.equal(new Set(answers.map((r) => r.headers['x-request-id'])).size, answers.length, 'one id per request');
  });

  it('a plain incoming x-request-id is echoed and handed to the use case as the caller\'s label beside our id; one shaped like an API key is not', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    const echoed = await request(app).post('/v1/images/generations').set(auth).set('x-request-id', 'client-id-0001').send({ model: MODEL, prompt: 'a kite' });
    assert.equal(echoed.status, 200);
    assert.equal(echoed.headers['x-request-id'], 'client-id-0001');
    assert.equal(images.calls[0]!.ctx.clientRequestId, 'client-id-0001');
    assert.match(images.calls[0]!.ctx.requestId, REQUEST_ID, 'the ledger id is ours, never the caller\'s');
    const unlabelled = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(unlabelled.headers['x-request-id'], images.calls[1]!.ctx.requestId, 'without a label the header carries our id');
    assert.equal(images.calls[1]!.ctx.clientRequestId, undefined);
    const replaced = await request(app).get('/healthz').set('x-request-id', USER_KEY);
    assert.match(String(replaced.headers['x-request-id']), REQUEST_ID);
  });
});

describe('app: authentication comes before the body', () => {
  it('a bad key gets 401 even for a body that is too large and not JSON, and the use case is never called', async () => {
    const images = fakeImageService();
    const authenticate = fakeAuthenticate();
    const app = fakeApp({ images, authenticate, maxBodyBytes: 1024 });
    const res = await request(app)
      .post('/v1/images/generations')
      .set('Authorization', 'Bearer sk-not-a-known-key-000')
      .set('Content-Type', 'application/json')
      .send(`{"model": ${'x'.repeat(10_000)}`);
    assert.equal(res.status, 401);
    const e = errorOf(res);
    assert.equal(e.type, 'authentication_error');
    assert.equal(e.code, 'invalid_api_key');
    assert.deepEqual(authenticate.asked, ['sk-not-a-known-key-000']);
    assert.equal(images.calls.length, 0);
  });

  // The deadline only turns a hang (the defect this test exists for) into a failure.
  it('answers 401 while the body is still unsent: nothing waits to read it', { timeout: 30_000 }, async () => {
    const app = fakeApp();
    // Content-Length promises 1 MB but only a few bytes are ever written: a
    // server that read the body before checking the key would wait for the
    // rest and never answer (the test would time out).
    const req = request(app)
      .post('/v1/images/generations')
      .set('Content-Type', 'application/json')
      .set('Content-Length', String(1024 * 1024))
      .set('Connection', 'close');
    req.write('{"model":');
    const res = await req;
    assert.equal(res.status, 401);
    assert.equal(errorOf(res).code, 'invalid_api_key');
  });

  it('a key store that cannot be reached is a 503 auth_unavailable, never a pass', async () => {
    const images = fakeImageService();
    const app = fakeApp({
      images,
      authenticate: async () => {
        throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
      },
    });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(res.status, 503);
    assert.equal(errorOf(res).code, 'auth_unavailable');
    assert.equal(res.headers['retry-after'], '5');
    assert.equal(images.calls.length, 0);
  });

  it('a key store that answers with an error is our 500, never a pass, and no retry is invited', async () => {
    const images = fakeImageService();
    const app = fakeApp({
      images,
      authenticate: async () => {
        throw Object.assign(new Error('relation "api_keys" does not exist'), { code: '42P01' });
      },
    });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(res.status, 500);
    assert.equal(errorOf(res).code, 'internal_error');
    assert.equal(res.headers['retry-after'], undefined);
    assert.equal(res.headers['x-should-retry'], 'false');
    assert.equal(images.calls.length, 0);
  });
});

describe('app: body and field errors', () => {
  it('a body over maxBodyBytes is 413 request_too_large', async () => {
    const app = fakeApp({ maxBodyBytes: 1024 });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'x'.repeat(2048) });
    assert.equal(res.status, 413);
    const e = errorOf(res);
    assert.equal(e.type, 'invalid_request_error');
    assert.equal(e.code, 'request_too_large');
  });

  it('a body that is not JSON is 400 invalid_json', async () => {
    const app = fakeApp();
    const res = await request(app).post('/v1/images/generations').set(auth).set('Content-Type', 'application/json').send('{"model": "x",');
    assert.equal(res.status, 400);
    const e = errorOf(res);
    assert.equal(e.code, 'invalid_json');
    assert.equal(e.param, null);
  });

  it('a body that is not declared JSON is 415', async () => {
    const app = fakeApp();
    const res = await request(app).post('/v1/images/generations').set(auth).set('Content-Type', 'text/plain').send('model=x');
    assert.equal(res.status, 415);
    assert.equal(errorOf(res).code, 'unsupported_media_type');
  });

  it('an unknown model is 404 model_not_found naming `model`, before any other problem of the body', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: 'dall-e-3', prompt: 5, n: 99, bogus: true });
    assert.equal(res.status, 404);
    const e = errorOf(res);
    assert.equal(e.code, 'model_not_found');
    assert.equal(e.param, 'model');
    assert.match(e.message, /dall-e-3/);
    assert.equal(images.calls.length, 0);
  });

  it('a bad field is 400 naming that field, and the use case is never called', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    for (const [body, param] of [
      [{ model: MODEL, prompt: 'a kite', n: 0 }, 'n'],
      [{ model: MODEL, prompt: 'a kite', seed: 'seven' }, 'seed'],
      [{ model: MODEL }, 'prompt'],
      [{ model: MODEL, prompt: 'a kite', not_a_field: 1 }, 'not_a_field'],
    ] as const) {
      const res = await request(app).post('/v1/images/generations').set(auth).send(body);
      assert.equal(res.status, 400, JSON.stringify(body));
      const e = errorOf(res);
      assert.equal(e.type, 'invalid_request_error');
      assert.equal(e.param, param, `${JSON.stringify(body)}: ${e.message}`);
    }
    assert.equal(images.calls.length, 0);
  });
});

describe('app: errors from the use case', () => {
  it('an ApiError becomes its status, the one JSON shape, and its retry headers', async () => {
    const err = new ApiError(503, 'fal is busy', { type: 'service_unavailable', code: 'upstream_busy', retryAfterS: 2.5, shouldRetry: true, headers: { 'x-extra': 'kept' } });
    const app = fakeApp({ images: fakeImageService({ error: err }) });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(res.status, 503);
    assert.deepEqual(res.body, { error: { message: 'fal is busy', type: 'service_unavailable', param: null, code: 'upstream_busy' } });
    assertMatchesSchema('error', res.body);
    assert.equal(res.headers['retry-after'], '3', 'whole seconds, rounded up');
    assert.equal(res.headers['retry-after-ms'], '2500');
    assert.equal(res.headers['x-should-retry'], 'true');
    assert.equal(res.headers['x-extra'], 'kept');
    assert.match(String(res.headers['x-request-id']), REQUEST_ID);
  });

  it('an upstream failure after billable work says x-should-retry: false', async () => {
    const app = fakeApp({ images: fakeImageService({ error: upstreamError('fal failed after billing', { shouldRetry: false }) }) });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(res.status, 502);
    const e = errorOf(res);
    assert.equal(e.type, 'upstream_error');
    assert.equal(res.headers['x-should-retry'], 'false');
    assert.equal(res.headers['retry-after'], undefined);
  });

  it('anything else is a generic 500 that leaks nothing, and is logged with the request id', async () => {
    const { logger, lines } = memoryLogger();
    const app = fakeApp({ logger, images: fakeImageService({ error: new Error('secret internals: fal-key-abc') }) });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite' });
    assert.equal(res.status, 500);
    const e = errorOf(res);
    assert.equal(e.type, 'server_error');
    assert.equal(e.code, 'internal_error');
    assert.doesNotMatch(res.text, /secret internals|fal-key-abc/);
    const logged = lines.find((l) => l['msg'] === 'request failed');
    assert.ok(logged, `logged: ${JSON.stringify(lines.map((l) => l['msg']))}`);
    assert.equal(logged['request_id'], res.headers['x-request-id']);
  });
});

describe('app: routes', () => {
  it('an unknown route is 404 unknown_route in the error shape, for any method', async () => {
    const app = fakeApp();
    for (const res of [await request(app).get('/v1/nope'), await request(app).post('/v1/images/nope').set(auth).send({})]) {
      assert.equal(res.status, 404);
      const e = errorOf(res);
      assert.equal(e.code, 'unknown_route');
      assert.equal(e.type, 'invalid_request_error');
    }
  });

  it('/v1/models needs a key and lists the registry', async () => {
    const app = fakeApp();
    assert.equal((await request(app).get('/v1/models')).status, 401);
    const res = await request(app).get('/v1/models').set(auth);
    assert.equal(res.status, 200);
    const body = res.body as { object: string; data: Array<{ id: string }> };
    assert.equal(body.object, 'list');
    assert.ok(body.data.some((m) => m.id === MODEL), body.data.map((m) => m.id).join(', '));
    const one = await request(app).get(`/v1/models/${MODEL}`).set(auth);
    assert.equal(one.status, 200);
    assert.equal((one.body as { id: string }).id, MODEL);
    const missing = await request(app).get('/v1/models/no/such-model').set(auth);
    assert.equal(missing.status, 404);
    assert.equal(errorOf(missing).param, 'model');
  });

  it('/v1/admin answers 403 to a user key on any path, known or not', async () => {
    const app = fakeApp();
    for (const path of ['/v1/admin/keys', '/v1/admin/no-such-thing']) {
      const res = await request(app).get(path).set(auth);
      assert.equal(res.status, 403, path);
      assert.equal(errorOf(res).code, 'permission_denied');
    }
    assert.equal((await request(app).get('/v1/admin/keys').set('Authorization', `Bearer ${ADMIN_KEY}`)).status, 200);
  });
});

describe('app: the images route', () => {
  it('answers the use case outcome as JSON with its headers, having handed it the canonical request', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', size: '1024x1024' });
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, cannedOutcome().body);
    assertMatchesSchema('images', res.body);
    assert.equal(res.headers['x-usage-cost-usd'], '0.005000');
    assert.equal(res.headers['x-usage-credits'], '10000');
    assert.equal(images.calls.length, 1);
    const { req, ctx } = images.calls[0]!;
    assert.equal(req.model.id, MODEL);
    assert.equal(req.stream, false);
    assert.equal(req.falInput['prompt'], 'a kite');
    assert.equal(ctx.keyId, USER.keyId);
    assert.equal(ctx.requestId, res.headers['x-request-id']);
    assert.equal(ctx.publicBaseUrl, 'https://gateway.example.test');
  });

  it('an Idempotency-Key repeat replays the stored answer without calling the use case again', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    const send = (prompt: string) => request(app).post('/v1/images/generations').set(auth).set('Idempotency-Key', 'idem-1').send({ model: MODEL, prompt });
    const first = await send('a kite');
    const again = await send('a kite');
    assert.equal(first.status, 200);
    assert.equal(again.status, 200);
    assert.deepEqual(again.body, first.body);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(images.calls.length, 1);
    const other = await send('another body');
    assert.equal(other.status, 422);
    assert.equal(errorOf(other).code, 'idempotency_key_reused');
  });
});

describe('app: the field policy on the images route', () => {
  it('hints reach the use case as ignoredParams and are declared in x-ignored-params; honoured fields are not', async () => {
    const images = fakeImageService();
    const res = await request(fakeApp({ images })).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', style: 'vivid', n: 1, quality: 'standard', background: null });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-ignored-params'], 'style, quality');
    assert.deepEqual(images.calls[0]!.req.ignoredParams, ['style', 'quality']);
    const plain = await request(fakeApp()).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', n: 1 });
    assert.equal(plain.headers['x-ignored-params'], undefined);
  });

  it('with strictParams the same request is a 400 naming the first hint, and the use case is never called', async () => {
    const images = fakeImageService();
    const res = await request(fakeApp({ images, strictParams: true })).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', style: 'vivid', quality: 'standard' });
    assert.equal(res.status, 400);
    const e = errorOf(res);
    assert.equal(e.param, 'style');
    assert.equal(e.code, 'unsupported_parameter');
    assert.equal(images.calls.length, 0);
  });

  it('CORS lets a browser read x-ignored-params', async () => {
    const res = await request(fakeApp({ corsOrigins: ['https://app.example.test'] })).post('/v1/images/generations').set(auth).set('Origin', 'https://app.example.test').send({ model: MODEL, prompt: 'a kite', quality: 'hd' });
    assert.match(String(res.headers['access-control-expose-headers']), /x-ignored-params/);
  });
});

describe('app: stream: true', () => {
  const b64Outcome = () =>
    cannedOutcome({
      body: {
        ...cannedOutcome().body,
        data: [{ b64_json: 'aW1hZ2Ugb25l' }, { b64_json: 'aW1hZ2UgdHdv' }],
        meta: { ...cannedOutcome().body.meta, usage: { credits_used: 6, tokens_used: 6, cost_usd: '0.000003' }, images: [] },
      },
    });

  it('sends the use case progress, then one completed event per image whose shares add up to the charge', async () => {
    const images = fakeImageService({
      outcome: b64Outcome(),
      progress: [
        { jobIndex: 0, jobCount: 1, status: { status: 'IN_QUEUE', queuePosition: 2 } },
        { jobIndex: 0, jobCount: 1, status: { status: 'IN_PROGRESS' } },
      ],
    });
    const app = fakeApp({ images });
    const res = await request(app).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', stream: true, n: 2 });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    assert.match(String(res.headers['x-request-id']), REQUEST_ID);
    const events = sseEvents(res.text);
    assert.deepEqual(events.map((e) => e.event), ['image_generation.progress', 'image_generation.progress', 'image_generation.completed', 'image_generation.completed']);
    assert.deepEqual(events.slice(0, 2).map((e) => [e.data['status'], e.data['queue_position']]), [['queued', 2], ['in_progress', null]]);
    for (const e of events.slice(0, 2)) assertMatchesSchema('progressEvent', e.data);
    const completed = events.slice(2).map((e) => e.data);
    assert.deepEqual(completed.map((c) => c['b64_json']), ['aW1hZ2Ugb25l', 'aW1hZ2UgdHdv']);
    assert.deepEqual(completed.map((c) => (c['usage'] as { cost_usd: string }).cost_usd), ['0.000002', '0.000001']);
    assert.equal(images.calls[0]!.req.stream, true);
  });

  it('a failure after the stream started is an error event in the one shape; before it, an ordinary error answer', async () => {
    const late = fakeApp({ images: fakeImageService({ error: upstreamError('fal failed'), progress: [{ jobIndex: 0, jobCount: 1, status: { status: 'IN_QUEUE', queuePosition: 0 } }] }) });
    const res = await request(late).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', stream: true });
    assert.equal(res.status, 200);
    const events = sseEvents(res.text);
    assert.deepEqual(events.map((e) => e.event), ['image_generation.progress', 'error']);
    assert.deepEqual(events[1]!.data, { error: { message: 'fal failed', type: 'upstream_error', param: null, code: 'upstream_error' } });

    const early = fakeApp({ images: fakeImageService({ error: upstreamError('fal refused') }) });
    const refused = await request(early).post('/v1/images/generations').set(auth).send({ model: MODEL, prompt: 'a kite', stream: true });
    assert.equal(refused.status, 502);
    assert.equal(errorOf(refused).message, 'fal refused');
  });

  it('stream with an Idempotency-Key is refused naming the header', async () => {
    const images = fakeImageService();
    const app = fakeApp({ images });
    const res = await request(app).post('/v1/images/generations').set(auth).set('Idempotency-Key', 'idem-2').send({ model: MODEL, prompt: 'a kite', stream: true });
    assert.equal(res.status, 400);
    assert.equal(errorOf(res).param, 'Idempotency-Key');
    assert.equal(images.calls.length, 0);
  });
});
