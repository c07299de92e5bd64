import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import OpenAI from 'openai';
import sharp from 'sharp';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { assertMatchesSchema } from '../helpers/schemas.js';
import { completedEvents } from '../../src/images/stream-events.js';
import type { CanonicalRequest } from '../../src/images/normalize.js';
import type { ImagesResponseBody } from '../../src/images/generate.js';
import { parseUsd } from '../../src/metering/money.js';
import { requestRow } from '../helpers/requests.js';

/** Every event shape a streamed answer may carry; the SDK types only OpenAI's own. */
interface StreamEvent {
  type: string;
  status?: string;
  queue_position?: number | null;
  job_index?: number;
  job_count?: number;
  b64_json?: string;
  image_index?: number;
  size?: string;
  output_format?: string;
  usage?: { credits_used: number; tokens_used: number; cost_usd: string };
  meta?: { usage: { cost_usd: string; credits_used: number }; fal_request_ids: string[] };
}

const MODEL = 'alibaba/z-image-turbo';
const rid = () => `req_stream_${randomUUID().replace(/-/g, '')}`;

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A raw read of the wire, with comments kept: what a proxy in between sees. */
function parseSse(text: string): Array<{ event: string | null; data: string | null; comment: string | null }> {
  return text
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      const lines = block.split('\n');
      const field = (name: string) => lines.find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2) ?? null;
      return { event: field('event'), data: field('data'), comment: lines[0]?.startsWith(':') ? lines[0].slice(1).trim() : null };
    });
}

describe('stream: true (Server-Sent Events)', () => {
  let t: TestService;
  let client: OpenAI;
  before(async () => {
    // Long enough for the status stream to report the job's states; keep-alives every 100 ms.
    t = await startTestService({ STREAM_KEEPALIVE_MS: '100' }, { latencyMs: 400 });
    client = new OpenAI({ apiKey: TEST_KEY, baseURL: `${t.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await t.close();
  });

  it('the unchanged openai SDK reads progress, then one completed event per image, billed as without streaming', async () => {
    const id = rid();
    const stream = await client.images.generate(
      { model: MODEL, prompt: 'two streamed kites', stream: true, n: 2, size: '768x512' },
      { headers: { 'x-request-id': id } },
    );
    const events: StreamEvent[] = [];
    for await (const ev of stream) events.push(ev as unknown as StreamEvent);

    const types = events.map((e) => e.type);
    const firstCompleted = types.indexOf('image_generation.completed');
    assert.ok(firstCompleted > 0, `progress comes first: ${types.join(', ')}`);
    assert.ok(types.slice(0, firstCompleted).every((ty) => ty === 'image_generation.progress'), types.join(', '));
    const progress = events.filter((e) => e.type === 'image_generation.progress');
    for (const p of progress) assertMatchesSchema('progressEvent', p);
    // Queued as soon as fal took the job, then whatever fal reported, never a step back.
    const statuses = progress.map((p) => p.status!);
    const order = ['queued', 'in_progress', 'completed'];
    assert.equal(statuses[0], 'queued');
    assert.ok(statuses.every((s, i) => i === 0 || order.indexOf(s) >= order.indexOf(statuses[i - 1]!)), statuses.join(', '));
    assert.ok(new Set(statuses).size >= 2, `fal's own reports come through: ${statuses.join(', ')}`);
    assert.ok(progress.every((p) => p.job_index === 0 && p.job_count === 1));

    const completed = events.filter((e) => e.type === 'image_generation.completed');
    assert.equal(completed.length, 2);
    for (const [k, c] of completed.entries()) {
      assertMatchesSchema('completedEvent', c);
      assert.equal(c.image_index, k);
      assert.equal(c.size, '768x512');
      const meta = await sharp(Buffer.from(c.b64_json!, 'base64')).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height], ['png', 768, 512]);
    }
    // Shares add up to the total, which only the last event's meta carries.
    assert.equal(completed[0]!.meta, undefined);
    const total = completed[1]!.meta!.usage.cost_usd;
    assert.equal(completed.reduce((s, c) => s + parseUsd(c.usage!.cost_usd), 0n), parseUsd(total));
    assert.equal(completed.reduce((s, c) => s + c.usage!.credits_used, 0), completed[1]!.meta!.usage.credits_used);

    const row = await requestRow(t.service, id);
    assert.equal(row?.status, 'settled');
    assert.equal(row?.chargeMicros, parseUsd(total));

    const plain = await request(t.url)
      .post('/v1/images/generations')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ model: MODEL, prompt: 'two plain kites', n: 2, size: '768x512', response_format: 'b64_json' });
    assert.equal(plain.status, 200);
    const plainRow = await requestRow(t.service, plain.headers['x-request-id'] as string);
    assert.equal(row?.chargeMicros, plainRow?.chargeMicros);
    assert.equal(row?.upstreamCostMicros, plainRow?.upstreamCostMicros);
    assert.equal(total, plain.body.meta.usage.cost_usd);
  });

  it('sends SSE headers, and keep-alive comments while a slow job runs', async () => {
    t.emulator.armFault({ kind: 'latency', latency_ms: 1200, prompt_contains: 'slow lighthouse' });
    const res = await fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'slow lighthouse', stream: true, image_size: 'square' }),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
    assert.match(res.headers.get('x-request-id') ?? '', /^req_/);
    assert.equal(res.headers.get('x-usage-cost-usd'), null, 'usage travels in the events');

    const blocks = parseSse(await res.text());
    const firstCompleted = blocks.findIndex((b) => b.event === 'image_generation.completed');
    assert.ok(firstCompleted > 0);
    const keepAlivesDuringJob = blocks.slice(0, firstCompleted).filter((b) => b.comment === 'keep-alive').length;
    // 1.2 s of work at one comment per 100 ms; generous for a loaded machine.
    assert.ok(keepAlivesDuringJob >= 4, `${keepAlivesDuringJob} keep-alives before the image`);
    for (const b of blocks.filter((x) => x.event !== null)) {
      assert.equal(JSON.parse(b.data!).type, b.event, 'the event name repeats the data type');
    }
    assert.equal(blocks.filter((b) => b.event === 'image_generation.completed').length, 1);
  });

  it('a fal failure mid-stream becomes an error event the SDK throws with its message; nothing is billed', async () => {
    t.emulator.armFault({
      kind: 'fail_after_start',
      status: 422,
      detail: [{ loc: ['body', 'prompt'], msg: 'this prompt is refused', type: 'value_error' }],
      prompt_contains: 'doomed',
    });
    const id = rid();
    const stream = await client.images.generate({ model: MODEL, prompt: 'a doomed kite', stream: true }, { headers: { 'x-request-id': id } });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const ev of stream) seen.push(ev.type);
      })(),
      (err: unknown) => {
        assert.ok(err instanceof OpenAI.APIError, String(err));
        assert.match(err.message, /this prompt is refused/);
        assert.equal(err.code, 'upstream_validation_error');
        assert.equal(err.param, 'prompt');
        assert.equal(err.type, 'invalid_request_error');
        return true;
      },
    );
    assert.ok(seen.includes('image_generation.progress'), 'the stream had started');
    assert.ok(!seen.includes('image_generation.completed'));
    const row = await requestRow(t.service, id);
    assert.equal(row?.status, 'failed');
    assert.equal(row?.chargeMicros, 0n);
  });

  it('the error event is the ordinary error body', async () => {
    t.emulator.armFault({ kind: 'fail_after_start', status: 500, prompt_contains: 'broken wire' });
    const res = await fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'broken wire', stream: true, image_size: 'square' }),
    });
    assert.equal(res.status, 200);
    const blocks = parseSse(await res.text()).filter((b) => b.event !== null);
    const last = blocks.at(-1)!;
    assert.equal(last.event, 'error');
    const body = JSON.parse(last.data!);
    assertMatchesSchema('error', body);
    assert.equal(body.error.type, 'upstream_error');
  });

  it('a caller who leaves mid-job gets the fal job cancelled and is not billed', async () => {
    // Held in fal's queue for far longer than the test runs (a queued job is
    // what a cancel removes; a running one runs on, as on fal), so the cancel
    // finds it queued however slow the machine is.
    t.emulator.armFault({ kind: 'latency', latency_ms: 3_600_000, queue_ms: 3_600_000, prompt_contains: 'abandoned kite' });
    const id = rid();
    const stream = await client.images.generate({ model: MODEL, prompt: 'abandoned kite', stream: true }, { headers: { 'x-request-id': id } });
    for await (const ev of stream) {
      // The job exists at fal once we hear of it: leave now.
      if (ev.type === ('image_generation.progress' as string)) break;
    }
    let falId: string | undefined;
    await until('the job to be cancelled at the emulator', async () => {
      falId = (await requestRow(t.service, id))?.jobs[0]?.falRequestId ?? undefined;
      return falId !== undefined && t.emulator.job(falId)?.outcome === 'cancelled';
    });
    await until('the reservation to be released', async () => (await requestRow(t.service, id))?.status === 'released');
    const row = await requestRow(t.service, id);
    assert.equal(row?.chargeMicros, 0n);
    assert.equal(row?.jobs[0]?.status, 'cancelled');
    assert.ok(!t.emulator.billing().some((b) => b.request_id === falId), 'fal billed nothing');
  });

  it('a caller who leaves after fal finished anyway is billed as without streaming', async () => {
    // The cancel is accepted but ignored, and the job completes within our confirmation window.
    t.emulator.armFault([
      { kind: 'latency', latency_ms: 600, prompt_contains: 'unstoppable kite' },
      { kind: 'cancel_refused', mode: 'ignored', prompt_contains: 'unstoppable kite' },
    ]);
    const id = rid();
    const stream = await client.images.generate({ model: MODEL, prompt: 'unstoppable kite', stream: true, size: '512x512' }, { headers: { 'x-request-id': id } });
    for await (const ev of stream) {
      if (ev.type === ('image_generation.progress' as string)) break;
    }
    await until('the request to settle', async () => (await requestRow(t.service, id))?.status === 'settled');
    const row = await requestRow(t.service, id);
    const falId = row?.jobs[0]?.falRequestId;
    assert.equal(t.emulator.job(falId!)?.outcome, 'ok');
    // 512×512 is one megapixel's worth at $0.005.
    assert.equal(row?.chargeMicros, 5_000n);
    assert.ok(t.emulator.billing().some((b) => b.request_id === falId));
  });

  it('n=6 fans out into two jobs and streams six completed events in order', async () => {
    const id = rid();
    const stream = await client.images.generate(
      { model: MODEL, prompt: 'six streamed boats', stream: true, n: 6, size: '512x512', output_format: 'jpeg' },
      { headers: { 'x-request-id': id } },
    );
    const events: StreamEvent[] = [];
    for await (const ev of stream) events.push(ev as unknown as StreamEvent);
    const progress = events.filter((e) => e.type === 'image_generation.progress');
    assert.ok(progress.every((p) => p.job_count === 2));
    assert.deepEqual([...new Set(progress.map((p) => p.job_index))].sort(), [0, 1]);
    const completed = events.filter((e) => e.type === 'image_generation.completed');
    assert.deepEqual(completed.map((c) => c.image_index), [0, 1, 2, 3, 4, 5]);
    const images = completed.map((c) => c.b64_json!);
    assert.equal(new Set(images).size, 6, 'distinct images');
    const meta = await sharp(Buffer.from(images[5]!, 'base64')).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 512, 512]);
    const last = completed[5]!.meta!;
    assert.equal(last.fal_request_ids.length, 2);
    const row = await requestRow(t.service, id);
    assert.equal(row?.status, 'settled');
    assert.equal(row?.jobs.length, 2);
    assert.equal(row?.chargeMicros, parseUsd(last.usage.cost_usd));
    assert.equal(completed.reduce((s, c) => s + parseUsd(c.usage!.cost_usd), 0n), row?.chargeMicros);
  });

  describe('refused before the stream starts: ordinary HTTP errors', () => {
    it('validation: the SDK raises BadRequestError naming the field', async () => {
      await assert.rejects(client.images.generate({ model: MODEL, prompt: 'x', stream: true, background: 'transparent' }), (err: unknown) => {
        assert.ok(err instanceof OpenAI.BadRequestError, String(err));
        assert.equal(err.param, 'background');
        return true;
      });
    });

    it('response_format "url" cannot be streamed', async () => {
      await assert.rejects(client.images.generate({ model: MODEL, prompt: 'x', stream: true, response_format: 'url' }), (err: unknown) => {
        assert.ok(err instanceof OpenAI.BadRequestError, String(err));
        assert.equal(err.param, 'response_format');
        assert.match(err.message, /b64_json/);
        return true;
      });
      // b64_json, or leaving it out, is what streaming delivers anyway.
      const res = await request(t.url)
        .post('/v1/images/generations')
        .set('Authorization', `Bearer ${TEST_KEY}`)
        .send({ model: MODEL, prompt: 'x', stream: true, response_format: 'b64_json', image_size: 'square' });
      assert.equal(res.status, 200);
      assert.match(res.headers['content-type'] ?? '', /^text\/event-stream/);
    });

    it('Idempotency-Key is refused with stream (a stream cannot be replayed), and nothing runs', async () => {
      const before = t.emulator.jobs().length;
      const res = await request(t.url)
        .post('/v1/images/generations')
        .set('Authorization', `Bearer ${TEST_KEY}`)
        .set('Idempotency-Key', 'stream-key-1')
        .send({ model: MODEL, prompt: 'x', stream: true });
      assert.equal(res.status, 400);
      assertMatchesSchema('error', res.body);
      assert.equal(res.body.error.param, 'Idempotency-Key');
      assert.equal(res.body.error.code, 'idempotency_not_streamable');
      assert.equal(t.emulator.jobs().length, before);
      // The same key still works without streaming: the refusal stored nothing under it.
      const plain = await request(t.url)
        .post('/v1/images/generations')
        .set('Authorization', `Bearer ${TEST_KEY}`)
        .set('Idempotency-Key', 'stream-key-1')
        .send({ model: MODEL, prompt: 'x' });
      assert.equal(plain.status, 200);
    });

    it('budget: 429 insufficient_quota, as without streaming', async () => {
      const { key } = await t.service.keys.create({ name: 'tiny', budgetMicros: 1_000n });
      const poor = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
      await assert.rejects(poor.images.generate({ model: MODEL, prompt: 'x', stream: true }), (err: unknown) => {
        assert.ok(err instanceof OpenAI.RateLimitError, String(err));
        assert.equal(err.code, 'insufficient_quota');
        return true;
      });
    });

    it('a wrong key: AuthenticationError', async () => {
      const bad = new OpenAI({ apiKey: 'sk-wrong-wrong-wrong-wrong', baseURL: `${t.url}/v1`, maxRetries: 0 });
      await assert.rejects(bad.images.generate({ model: MODEL, prompt: 'x', stream: true }), OpenAI.AuthenticationError);
    });
  });
});

describe('completed events', () => {
  const req = { size: { width: 512, height: 512 }, outputFormat: 'png' } as CanonicalRequest;
  const body = (costUsd: string, credits: number, n: number): ImagesResponseBody => ({
    created: 1763769600,
    data: Array.from({ length: n }, (_, k) => ({ b64_json: `aW1n${k}` })),
    meta: {
      usage: { credits_used: credits, tokens_used: credits, cost_usd: costUsd },
      seed: 1,
      images: [],
      request_id: 'req_s',
      fal_request_id: 'f',
      fal_request_ids: ['f'],
    },
  });

  it('split the charge into shares that add up to the micro-dollar', () => {
    const events = completedEvents(req, body('0.010001', 20002, 3));
    assert.deepEqual(events.map((e) => e.usage.cost_usd), ['0.003334', '0.003334', '0.003333']);
    assert.deepEqual(events.map((e) => e.usage.credits_used), [6668, 6668, 6666]);
    assert.equal(events.reduce((s, e) => s + e.usage.credits_used, 0), 20002);
    assert.equal(events.filter((e) => e.meta !== undefined).length, 1);
    assert.equal(events[2]!.meta?.usage.cost_usd, '0.010001');
  });
});
