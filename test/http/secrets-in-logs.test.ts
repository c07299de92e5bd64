import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { startTestService, type TestService } from '../helpers/service.js';
import type { EmulatorLogger } from '../../src/emulator/index.js';
import { createStorage, postgresAvailability, serviceEnv, type TestStorage } from '../helpers/databases.js';

/**
 * Every log line of a service at LOG_LEVEL=trace, driven through successes,
 * every kind of failure and the admin surface, is scanned for the secrets it
 * was configured with (raw, JSON-escaped, base64) and for the prompt.
 */

const FAL_KEY = 'fal-SECRET-0f1e2d3c4b5a69788796a5b4c3d2e1f0';
const USER_KEY = 'sk-user-SECRET-7a6b5c4d3e2f1a0b';
const OTHER_USER_KEY = 'sk-other-SECRET-1029384756abcdef';
const ADMIN_KEY = 'sk-admin-SECRET-99aa88bb77cc66dd';
const WEBHOOK_SECRET = 'whsec_' + Buffer.from('billing-SECRET-signing-key-0123456789').toString('base64');
const DB_PASSWORD = 'dbpw-SECRET-5e4d3c2b1a';
const PROMPT = 'zebra-quokka-PROMPT-7f3a9c a heron wading at dusk';

function forms(secret: string): string[] {
  return [secret, JSON.stringify(secret).slice(1, -1), Buffer.from(secret).toString('base64').replace(/=+$/, ''), Buffer.from(secret).toString('base64url')];
}

/** Lines a pino-style emulator logger receives, as JSON text (errors with message and stack). */
function captureEmulatorLog(lines: string[]): EmulatorLogger {
  const write = (obj: unknown, msg?: string) =>
    lines.push(
      JSON.stringify({ obj, msg }, (_k, v: unknown) => (v instanceof Error ? { ...v, name: v.name, message: v.message, stack: v.stack } : v)),
    );
  return { debug: write, info: write, warn: write, error: write };
}

function billingReceiver() {
  let server: Server;
  let calls = 0;
  return {
    calls: () => calls,
    url: () => `http://127.0.0.1:${(server.address() as AddressInfo).port}/billing`,
    async start() {
      server = createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          calls++;
          // The first delivery fails, so the worker logs a retry.
          res.writeHead(calls === 1 ? 500 : 200).end();
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    },
    stop: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
}

function assertNoSecrets(text: string, secrets: string[], where: string): void {
  for (const s of secrets) {
    for (const f of forms(s)) assert.ok(!text.includes(f), `${where} contains a secret (${JSON.stringify(s.slice(0, 12))}…) as ${JSON.stringify(f.slice(0, 16))}…`);
  }
}

const gen = (extra: Record<string, unknown> = {}) => ({ model: 'alibaba/z-image-turbo', prompt: PROMPT, image_size: 'square', ...extra });

describe('no secrets in logs', () => {
  let t: TestService;
  const emulatorLines: string[] = [];
  const receiver = billingReceiver();
  const createdKeys: string[] = [];

  before(async () => {
    await receiver.start();
    t = await startTestService(
      {
        LOG_LEVEL: 'trace',
        FAL_KEY,
        API_KEYS: `${USER_KEY},${OTHER_USER_KEY}`,
        ADMIN_API_KEY: ADMIN_KEY,
        BILLING_WEBHOOK_URL: receiver.url(),
        BILLING_WEBHOOK_SECRET: WEBHOOK_SECRET,
        BILLING_WEBHOOK_MAX_BACKOFF_MS: '50',
        REQUEST_TIMEOUT_MS: '5000',
      },
      { emulatorKey: FAL_KEY, logger: captureEmulatorLog(emulatorLines) },
    );
  });
  after(async () => {
    await t.close();
    await receiver.stop();
  });

  const post = (key: string | null, body: unknown, headers: Record<string, string> = {}) => {
    const r = request(t.url).post('/v1/images/generations').set(headers);
    if (key) r.set('Authorization', `Bearer ${key}`);
    return r.send(body as object);
  };

  it('drives successes, failures, fal faults and the admin surface; no line holds a secret or the prompt', async () => {
    // Successes, both response formats, a download, an idempotent replay.
    assert.equal((await post(USER_KEY, gen())).status, 200);
    assert.equal((await post(USER_KEY, gen({ response_format: 'b64_json' }))).status, 200);
    t.emulator.armFault({ kind: 'ignore_sync_mode' });
    assert.equal((await post(USER_KEY, gen({ response_format: 'b64_json' }))).status, 200);
    assert.equal((await post(USER_KEY, gen(), { 'Idempotency-Key': 'idem-secret-test' })).status, 200);
    assert.equal((await post(USER_KEY, gen(), { 'Idempotency-Key': 'idem-secret-test' })).status, 200);

    // Wrong keys, near misses that contain a real key, keys in odd places.
    assert.equal((await post(`${USER_KEY}x`, gen())).status, 401);
    assert.equal((await post('sk-wrong-0123456789abcdef', gen())).status, 401);
    assert.equal((await post(null, gen(), { Authorization: `Basic ${Buffer.from(`user:${USER_KEY}`).toString('base64')}` })).status, 401);
    assert.equal((await post(null, gen(), { Authorization: USER_KEY })).status, 401);
    assert.equal((await post(null, gen())).status, 401);
    assert.equal((await post(USER_KEY, gen(), { 'x-request-id': USER_KEY })).status, 200);
    assert.equal((await request(t.url).get(`/v1/admin/${ADMIN_KEY}`).set('Authorization', `Bearer ${USER_KEY}`)).status, 403);
    assert.equal((await request(t.url).get(`/v1/admin/keys/${ADMIN_KEY}`).set('Authorization', `Bearer ${ADMIN_KEY}`)).status, 404);
    assert.equal((await request(t.url).get(`/${USER_KEY}`)).status, 404);
    assert.equal((await request(t.url).get(`/v1/usage?key_id=${OTHER_USER_KEY}`).set('Authorization', `Bearer ${USER_KEY}`)).status, 403);

    // Validation errors, with the prompt and keys inside the bodies.
    assert.equal((await post(USER_KEY, `{"model":"alibaba/z-image-turbo","prompt":"${PROMPT}","k":"${USER_KEY}"`, { 'content-type': 'application/json' })).status, 400);
    assert.equal((await post(USER_KEY, { ...gen(), [USER_KEY]: FAL_KEY })).status, 400);
    assert.equal((await post(USER_KEY, gen({ num_inference_steps: 99 }))).status, 400);
    assert.equal((await post(USER_KEY, gen({ model: `x-${ADMIN_KEY}` }))).status, 404);
    assert.equal((await post(USER_KEY, { prompt: PROMPT.repeat(400), model: 'alibaba/z-image-turbo', pad: 'x'.repeat(2_000_000) })).status, 413);
    assert.equal((await post(USER_KEY, PROMPT, { 'content-type': 'text/plain' })).status, 415);

    // fal faults: credentials refused, ambiguous submit, result failures, resets, a 422 echoing the input, 429, a failing job.
    const fault = async (spec: Parameters<TestService['emulator']['armFault']>[0], status: number) => {
      t.emulator.clearFaults();
      t.emulator.armFault(spec);
      const res = await post(USER_KEY, gen());
      assert.equal(res.status, status, `${JSON.stringify(spec)}: ${JSON.stringify(res.body)}`);
    };
    await fault({ phase: 'submit', status: 401, detail: `bad key ${FAL_KEY}` }, 502);
    await fault({ phase: 'submit', status: 500, detail: `internal ${FAL_KEY} ${PROMPT}` }, 502);
    await fault({ phase: 'result', status: 500, times: 10, detail: `result ${FAL_KEY} ${PROMPT}` }, 502);
    await fault({ phase: 'submit', kind: 'reset' }, 502);
    await fault({ phase: 'result', kind: 'reset', times: 10 }, 502);
    await fault({ phase: 'submit', status: 422, detail: [{ loc: ['body', 'prompt'], msg: 'content policy', input: PROMPT, key: FAL_KEY }] }, 400);
    await fault({ phase: 'submit', status: 429, retry_after: 60, times: 10 }, 429);
    await fault({ kind: 'fail_after_start', status: 500, detail: `CUDA out of memory; prompt=${PROMPT} auth=Key ${FAL_KEY}` }, 502);
    await fault({ kind: 'non_json', phase: 'result', status: 502, times: 10, body: `<html>${FAL_KEY} ${PROMPT}</html>` }, 502);
    t.emulator.clearFaults();

    // The admin surface: keys created (their secret is shown once, never logged), used, changed, disabled.
    const admin = (m: 'get' | 'post' | 'patch' | 'delete', path: string, key = ADMIN_KEY) =>
      request(t.url)[m](path).set('Authorization', `Bearer ${key}`);
    const created = await admin('post', '/v1/admin/keys').send({ name: 'tenant-a', budget_usd: '1.00' });
    assert.equal(created.status, 201);
    createdKeys.push(created.body.key as string);
    const id = created.body.id as string;
    assert.equal((await post(created.body.key, gen())).status, 200);
    assert.equal((await admin('get', '/v1/admin/keys')).status, 200);
    assert.equal((await admin('get', `/v1/admin/keys/${id}`)).status, 200);
    assert.equal((await admin('patch', `/v1/admin/keys/${id}`).send({ rpm_limit: 5 })).status, 200);
    assert.equal((await admin('get', '/v1/admin/usage?format=csv')).status, 200);
    assert.equal((await admin('get', '/v1/usage?format=jsonl', USER_KEY)).status, 200);
    assert.equal((await admin('post', '/v1/admin/keys', USER_KEY).send({ name: 'x' })).status, 403);
    assert.equal((await admin('delete', `/v1/admin/keys/${id}`)).status, 200);
    // Keys are cached for up to 2 s (metering/auth.ts): the disabled key stops working within that.
    let status = 0;
    for (let i = 0; i < 40 && status !== 401; i++) {
      status = (await post(created.body.key, gen())).status;
      if (status !== 401) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 401);
    assert.equal((await admin('post', '/v1/admin/keys').send({ name: 5, key: USER_KEY })).status, 400);

    // Health, readiness and metrics.
    assert.equal((await request(t.url).get('/readyz')).status, 200);
    assert.equal((await request(t.url).get('/metrics')).status, 200);

    // The billing webhook signs with its secret; let it fail once and retry.
    await waitFor(() => receiver.calls() >= 2);

    const text = t.logs.map((l) => JSON.stringify(l)).join('\n');
    // The scan saw real material: debug lines, error lines with error objects, the webhook's retry.
    assert.ok(t.logs.some((l) => l['level'] === 20), 'debug lines were captured');
    assert.ok(t.logs.some((l) => Number(l['level']) >= 50 && l['err']), 'error lines with error objects were captured');
    assert.ok(t.logs.some((l) => l['msg'] === 'request' && l['status'] === 401), 'refused requests were logged');
    assert.ok(text.includes('billing'), 'billing webhook lines were captured');
    assertNoSecrets(text, [FAL_KEY, USER_KEY, OTHER_USER_KEY, ADMIN_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.slice(6), ...createdKeys], 'the service log');
    assert.ok(!text.includes('zebra-quokka'), 'the prompt is not logged without LOG_PROMPTS');
    assert.ok(!text.includes(Buffer.from(PROMPT).toString('base64').slice(0, 24)), 'nor its base64');
    // Unmatched paths are not logged verbatim (they may hold whatever the caller pasted).
    assert.ok(t.logs.some((l) => l['msg'] === 'request' && l['route'] === '/v1/admin/*'));

    assertNoSecrets(emulatorLines.join('\n'), [FAL_KEY, USER_KEY, OTHER_USER_KEY, ADMIN_KEY, WEBHOOK_SECRET, ...createdKeys], 'the emulator log');
  });

  it('a wrong fal key is refused upstream and never logged', async () => {
    const wrongFalKey = 'fal-WRONG-SECRET-aabbccddeeff0011';
    const w = await startTestService({ LOG_LEVEL: 'trace', FAL_KEY: wrongFalKey }, { emulatorKey: FAL_KEY });
    try {
      const res = await request(w.url).post('/v1/images/generations').set('Authorization', `Bearer ${w.key}`).send(gen());
      assert.equal(res.status, 502);
      assert.equal(res.body.error.code, 'upstream_auth_failed');
      assertNoSecrets(w.logs.map((l) => JSON.stringify(l)).join('\n'), [wrongFalKey, w.key], 'the service log');
    } finally {
      await w.close();
    }
  });
});

describe('LOG_PROMPTS', () => {
  it('true: the access line of an image request carries its prompt, and no other line does', async () => {
    const t = await startTestService({ LOG_LEVEL: 'trace', LOG_PROMPTS: 'true' });
    try {
      const ok = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${t.key}`).send(gen());
      assert.equal(ok.status, 200);
      t.emulator.armFault({ phase: 'result', status: 500, times: 10, detail: `echo ${PROMPT}` });
      const failed = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${t.key}`).send(gen());
      assert.equal(failed.status, 502);
      await waitFor(() => t.logs.filter((l) => l['msg'] === 'request').length >= 2);
      const withPrompt = t.logs.filter((l) => JSON.stringify(l).includes('zebra-quokka'));
      assert.equal(withPrompt.length, 2, JSON.stringify(withPrompt));
      for (const l of withPrompt) {
        assert.equal(l['msg'], 'request');
        assert.equal(l['prompt'], PROMPT);
      }
      assert.deepEqual(withPrompt.map((l) => l['request_id']).sort(), [ok.headers['x-request-id'], failed.headers['x-request-id']].sort());
    } finally {
      await t.close();
    }
  });

  it('false (the default): never', async () => {
    const t = await startTestService({ LOG_LEVEL: 'trace' });
    try {
      assert.equal((await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${t.key}`).send(gen())).status, 200);
      await waitFor(() => t.logs.some((l) => l['msg'] === 'request'));
      assert.ok(!JSON.stringify(t.logs).includes('zebra-quokka'));
      assert.ok(!t.logs.some((l) => 'prompt' in l));
    } finally {
      await t.close();
    }
  });
});

describe('database password', () => {
  let storage: TestStorage | undefined;
  after(async () => {
    await storage?.destroy();
  });

  it('a PostgreSQL DATABASE_URL password never reaches a log line', async (ctx) => {
    const pg = await postgresAvailability();
    if (!pg.ok) {
      ctx.skip(`PostgreSQL not reachable: ${pg.reason}`);
      return;
    }
    storage = await createStorage('postgres');
    const env = await serviceEnv(storage);
    // The local server trusts loopback, so the password is carried but never checked.
    const url = new URL(env.DATABASE_URL!);
    url.password = DB_PASSWORD;
    const t = await startTestService({ LOG_LEVEL: 'trace', DATABASE_URL: url.toString(), FILE_URL_SECRET: 'x'.repeat(32) });
    try {
      assert.equal((await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${t.key}`).send(gen())).status, 200);
      assert.equal((await request(t.url).get('/readyz')).status, 200);
      // A failure that carries the connection error: the ledger breaks under a request.
      await t.service.database.close();
      const res = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${t.key}`).send(gen());
      assert.equal(res.status, 503);
      assert.ok(t.logs.some((l) => Number(l['level']) >= 50), 'the failure was logged');
      assertNoSecrets(t.logs.map((l) => JSON.stringify(l)).join('\n'), [DB_PASSWORD], 'the service log');
    } finally {
      await t.close().catch(() => {});
    }
  });

  it('a malformed DATABASE_URL is reported without its password', async () => {
    const { loadConfig } = await import('../../src/config.js');
    assert.throws(
      () => loadConfig({ DATABASE_URL: `mysql://u:${DB_PASSWORD}@db/x`, FAL_KEY: 'k' }),
      (e: unknown) => e instanceof Error && /DATABASE_URL/.test(e.message) && !e.message.includes(DB_PASSWORD),
    );
  });
});
