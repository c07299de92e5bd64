import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startEmulator, type Emulator } from '../src/emulator/index.js';
import { createDatabase } from '../src/db/index.js';
import { TEST_KEY } from './helpers/service.js';

/** The process as `npm start` runs it: banner, configuration errors, graceful SIGTERM. */

const root = new URL('../', import.meta.url).pathname;

function spawnMain(env: Record<string, string>): { child: ChildProcess; out: string[]; exit: Promise<number | string | null>; url: Promise<string> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: root,
    // No minimum drain unless a test asks: most tests here signal the process and wait for its exit.
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PORT: '0', SHUTDOWN_MIN_DRAIN_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: string[] = [];
  const exit = new Promise<number | string | null>((r) => child.once('exit', (code, signal) => r(code ?? signal)));
  const url = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      out.push(line);
      const m = /listening on (http:\/\/\S+)/.exec(line);
      if (m) resolve(m[1]!);
    });
    createInterface({ input: child.stderr! }).on('line', (line) => out.push(line));
    void exit.then(() => reject(new Error(`exited before listening:\n${out.join('\n')}`)));
  });
  // Not every caller waits for the URL (a start that must fail); mark it handled.
  url.catch(() => {});
  return { child, out, exit, url };
}

describe('main', () => {
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'gw-main-'));
  });
  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('with no configuration: embedded emulator, loud banner, a generated key shown once and kept hashed', async () => {
    const p = spawnMain({ DATA_DIR: join(dataDir, 'embedded') });
    try {
      const url = await p.url;
      const text = p.out.join('\n');
      assert.match(text, /EMULATED IMAGES/);
      const key = /^\s+(sk-[A-Za-z0-9_-]{40,})\s*$/m.exec(text)?.[1];
      assert.ok(key, 'the generated key is printed');
      const res = await fetch(`${url}/v1/images/generations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'embedded', image_size: 'square' }),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { data: Array<{ url: string }> };
      assert.ok(body.data[0]!.url.startsWith(`${url}/v1/files/`));
      const noKey = await fetch(`${url}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      assert.equal(noKey.status, 401, 'no door is silently open');
    } finally {
      p.child.kill('SIGTERM');
      assert.equal(await p.exit, 0);
    }
    // A second start keeps the same key and does not print it again.
    const again = spawnMain({ DATA_DIR: join(dataDir, 'embedded') });
    try {
      await again.url;
      assert.doesNotMatch(again.out.join('\n'), /^\s+sk-/m);
      assert.match(again.out.join('\n'), /using the key generated on/);
    } finally {
      again.child.kill('SIGTERM');
      assert.equal(await again.exit, 0);
    }
  });

  it('log lines are for people on a terminal and JSON through a pipe; the banner is the same in both', async () => {
    // A fresh data directory for each start, so each migrates and logs it.
    const env = { PORT: '0', API_KEYS: TEST_KEY, DATA_DIR: join(dataDir, 'log-format-pipe'), RECONCILE_INTERVAL_MS: '0' };
    const bannerOf = (text: string) => text.slice(text.indexOf('fal images gateway listening')).split('\n\n').slice(0, 2).join('\n\n').replace(/127\.0\.0\.1:\d+/g, 'HOST');

    const piped = spawnMain(env);
    let pipedText: string;
    try {
      await piped.url;
    } finally {
      piped.child.kill('SIGTERM');
      assert.equal(await piped.exit, 0);
      pipedText = piped.out.join('\n');
    }
    const logLines = piped.out.filter((l) => l.startsWith('{'));
    assert.ok(logLines.length >= 2, pipedText);
    for (const l of logLines) assert.equal(typeof (JSON.parse(l) as { msg?: unknown }).msg, 'string');

    // `script` gives the process a pseudo-terminal, as a shell running `npm start` does; Ctrl-C through it is the SIGINT a person sends.
    const tty = spawn('script', ['-qec', `exec ${process.execPath} --import tsx src/main.ts`, '/dev/null'], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', TERM: 'dumb', ...env, DATA_DIR: join(dataDir, 'log-format-tty') },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let ttyText = '';
    const exit = new Promise<number | string | null>((r) => tty.once('exit', (code, signal) => r(code ?? signal)));
    const listening = new Promise<void>((resolve, reject) => {
      const onData = (c: Buffer) => {
        ttyText += c.toString('utf8').replace(/\r/g, '');
        if (/listening on http:\/\/\S+\n/.test(ttyText)) resolve();
      };
      tty.stdout!.on('data', onData);
      tty.stderr!.on('data', onData);
      void exit.then(() => reject(new Error(`exited before listening:\n${ttyText}`)));
    });
    try {
      await listening;
    } finally {
      tty.stdin!.write('\x03');
      assert.equal(await exit, 0, ttyText);
    }
    assert.match(ttyText, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: database migrated\n {4}migrations: \[/m);
    assert.match(ttyText, /INFO: shutting down\n {4}signal: "SIGINT"/);
    assert.doesNotMatch(ttyText, /^\{"level"/m, 'no JSON line on a terminal');
    assert.equal(bannerOf(ttyText), bannerOf(pipedText));
  });

  it('refuses a bad configuration with every problem listed, exit 2', async () => {
    const p = spawnMain({
      PORT: 'eighty',
      PRICE_MARKUP: '-1',
      DATABASE_URL: 'mysql://x',
      MAX_IN_FLIGHT: '100',
      MAX_CONNECTIONS: '100',
      HEADERS_TIMEOUT_MS: '20000',
      BODY_TIMEOUT_MS: '10000',
    });
    assert.equal(await p.exit, 2);
    const text = p.out.join('\n');
    assert.match(text, /PORT must be an integer/);
    assert.match(text, /PRICE_MARKUP must be a positive decimal/);
    assert.match(text, /DATABASE_URL must be a postgres/);
    assert.match(text, /MAX_CONNECTIONS \(100\) must be greater than MAX_IN_FLIGHT \(100\)/);
    assert.match(text, /BODY_TIMEOUT_MS \(10000\) must be at least HEADERS_TIMEOUT_MS \(20000\)/);
  });

  describe('SIGTERM under load', () => {
    let emulator: Emulator;
    before(async () => {
      emulator = await startEmulator({ port: 0, latencyMs: 1200 });
    });
    after(async () => {
      await emulator.close();
    });

    it('stops taking requests, answers and bills every accepted one, exits 0', async () => {
      const dir = join(dataDir, 'sigterm');
      const p = spawnMain({
        DATA_DIR: dir,
        FAL_BASE_URL: emulator.url,
        FAL_KEY: 'k',
        API_KEYS: TEST_KEY,
        SHUTDOWN_GRACE_MS: '10000',
        SHUTDOWN_MIN_DRAIN_MS: '3000',
        RECONCILE_INTERVAL_MS: '0',
      });
      const url = await p.url;
      const send = (i: number) =>
        fetch(`${url}/v1/images/generations`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: `drain ${i}`, image_size: 'square' }),
        }).then(
          async (r) => ({
            status: r.status,
            body: (await r.json()) as { meta?: { usage: { cost_usd: string } }; error?: { code: string } },
            id: r.headers.get('x-request-id'),
            retryAfter: r.headers.get('retry-after'),
          }),
          () => ({ status: 0, body: {} as { error?: { code: string } }, id: null, retryAfter: null }),
        );
      const accepted = Array.from({ length: 12 }, (_, i) => send(i));
      // SIGTERM once every request is at fal.
      for (let i = 0; i < 200 && emulator.jobs().length < 12; i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal(emulator.jobs().length, 12);
      p.child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 100));
      const late = await send(99);
      assert.equal(late.status, 503, 'a request after SIGTERM is answered (still listening), and refused');
      assert.equal(late.body.error?.code, 'shutting_down');
      assert.ok(Number(late.retryAfter) >= 1, `retry-after ${late.retryAfter}`);
      const results = await Promise.all(accepted);
      assert.deepEqual(results.map((r) => r.status), Array(12).fill(200), 'every accepted request answered');
      assert.equal(await p.exit, 0);

      const database = await createDatabase({ dataDir: dir });
      try {
        const rows = await database.db.selectFrom('requests').selectAll().execute();
        assert.equal(rows.length, 12, 'the refused request left no row');
        for (const r of rows) assert.equal(r.status, 'settled');
        assert.equal(emulator.billing().length, 12);
      } finally {
        await database.close();
      }
    });
  });

  describe('SIGTERM with nothing in flight: the drain a load balancer sees', () => {
    let emulator: Emulator;
    before(async () => {
      emulator = await startEmulator({ port: 0, latencyMs: 20 });
    });
    after(async () => {
      await emulator.close();
    });

    const start = (name: string, env: Record<string, string>) =>
      spawnMain({ DATA_DIR: join(dataDir, name), FAL_BASE_URL: emulator.url, FAL_KEY: 'k', API_KEYS: TEST_KEY, RECONCILE_INTERVAL_MS: '0', ...env });
    const image = (url: string) =>
      fetch(`${url}/v1/images/generations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt: 'during the drain', image_size: 'square' }),
      });

    it('keeps listening for SHUTDOWN_MIN_DRAIN_MS: /readyz 503 at once, image requests 503 shutting_down with retry-after, then exit 0', async () => {
      const p = start('min-drain', { SHUTDOWN_MIN_DRAIN_MS: '3000', SHUTDOWN_GRACE_MS: '10000' });
      const url = await p.url;
      assert.equal((await fetch(`${url}/readyz`)).status, 200);
      const signalled = Date.now();
      p.child.kill('SIGTERM');
      // The signal takes a moment to arrive: the first answers may still say ready. From the first
      // 503 on, the drain has begun and lasts three seconds: for one second every answer is a 503,
      // none a refused connection.
      const seen: Array<{ status: number; body: { status?: string } }> = [];
      let drainSeenAt: number | undefined;
      while (drainSeenAt === undefined || Date.now() - drainSeenAt < 1_000) {
        const res = await fetch(`${url}/readyz`);
        seen.push({ status: res.status, body: (await res.json()) as { status?: string } });
        if (res.status === 503) drainSeenAt ??= Date.now();
        else assert.equal(drainSeenAt, undefined, `ready again after the drain began: ${JSON.stringify(seen)}`);
        assert.ok(Date.now() - signalled < 20_000, 'the drain never showed on /readyz');
      }
      const draining = seen.slice(seen.findIndex((r) => r.status === 503));
      assert.ok(draining.length > 1 && draining.every((r) => r.status === 503 && r.body.status === 'shutting_down'), JSON.stringify(seen));
      const refused = await image(url);
      assert.equal(refused.status, 503);
      assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'shutting_down');
      assert.ok(Number(refused.headers.get('retry-after')) >= 1);
      assert.equal(await p.exit, 0);
      const drainedMs = Date.now() - signalled;
      assert.ok(drainedMs >= 3_000, `exited ${drainedMs} ms after SIGTERM, before the minimum drain`);
      assert.equal(emulator.jobs().length, 0, 'nothing refused reached fal');
    });

    it('a second signal ends the minimum drain at once', async () => {
      const p = start('second-signal', { SHUTDOWN_MIN_DRAIN_MS: '600000' });
      const url = await p.url;
      p.child.kill('SIGINT');
      for (let i = 0; i < 200 && (await fetch(`${url}/readyz`)).status !== 503; i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal((await fetch(`${url}/readyz`)).status, 503, 'draining');
      p.child.kill('SIGINT');
      assert.equal(await p.exit, 0, 'exited well before the ten-minute drain (the test would time out)');
    });
  });
});
