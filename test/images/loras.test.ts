import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { loadConfig } from '../../src/config.js';
import { startService, type Service } from '../../src/service.js';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { TEST_KEY } from '../helpers/service.js';

/**
 * Local LoRA files: only under LORA_DIR, uploaded to fal storage once per
 * content (SHA-256), remembered across restarts, and the fal URL is what
 * reaches fal. Everything else is a 400 naming `loras`, before any
 * reservation or fal call.
 */

const LORA = 'alibaba/z-image-turbo-lora';

describe('local LoRA files', () => {
  let emu: Emulator;
  let root: string;
  let loraDir: string;
  let outside: string;
  let dataDir: string;
  let style: Buffer;
  let service: Service;

  const start = (env: Record<string, string> = {}) =>
    startService(
      loadConfig({ PORT: '0', API_KEYS: TEST_KEY, FAL_BASE_URL: emu.url, FAL_KEY: 'fal-test-key', DATA_DIR: dataDir, LORA_DIR: loraDir, LOG_LEVEL: 'silent', ...env }),
      { emulator: emu },
    );
  const generate = (s: Service, loras: unknown) =>
    request(s.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: LORA, prompt: 'a fox, in the style', image_size: 'square', loras });
  const uploads = () => emu.stats()['upload'] ?? 0;
  const requestRows = async (s: Service) => (await s.database.db.selectFrom('requests').select('id').execute()).length;

  before(async () => {
    emu = await startEmulator({ port: 0, latencyMs: 20 });
    root = await mkdtemp(join(tmpdir(), 'gw-lora-'));
    loraDir = join(root, 'loras');
    outside = join(root, 'outside');
    dataDir = join(root, 'data');
    await mkdir(join(loraDir, 'sub'), { recursive: true });
    await mkdir(join(loraDir, 'adir'));
    await mkdir(outside);
    style = randomBytes(4096);
    await writeFile(join(loraDir, 'style.safetensors'), style);
    await writeFile(join(loraDir, 'sub', 'other.safetensors'), randomBytes(2048));
    await writeFile(join(loraDir, 'sub', 'same-as-style.safetensors'), style);
    await writeFile(join(outside, 'secret.safetensors'), randomBytes(64));
    await symlink(join(outside, 'secret.safetensors'), join(loraDir, 'escape.safetensors'));
    await symlink(outside, join(loraDir, 'escape-dir'));
    await symlink(join(loraDir, 'style.safetensors'), join(loraDir, 'alias.safetensors'));
    service = await start();
  });

  after(async () => {
    await service?.close();
    await emu.close();
    await rm(root, { recursive: true, force: true });
  });

  let styleUrl: string;

  it('uploads a ./relative file once and sends fal its storage URL', async () => {
    const before = uploads();
    const res = await generate(service, [{ path: './style.safetensors', scale: 0.7 }]);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const perUpload = uploads() - before;
    assert.ok(perUpload > 0, 'uploaded');
    const job = emu.job(res.body.meta.fal_request_id);
    const sent = (job?.input['loras'] as Array<{ path: string; scale: number }>)[0]!;
    styleUrl = sent.path;
    assert.equal(sent.scale, 0.7);
    assert.ok(styleUrl.startsWith(`${emu.url}/v3.fal.media/files/`), styleUrl);
    const stored = Buffer.from(await (await fetch(styleUrl)).arrayBuffer());
    assert.ok(stored.equals(style), 'fal storage holds the file');

    // The same file again, by its absolute path: no new upload, the same URL.
    const again = await generate(service, [{ path: join(loraDir, 'style.safetensors') }]);
    assert.equal(again.status, 200);
    assert.equal(uploads() - before, perUpload, 'uploaded once');
    assert.equal((emu.job(again.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>)[0]!.path, styleUrl);

    // Same content under another name (and through a symlink inside LORA_DIR): same hash, no upload.
    const copy = await generate(service, [{ path: './sub/same-as-style.safetensors' }, { path: './alias.safetensors' }]);
    assert.equal(copy.status, 200);
    assert.equal(uploads() - before, perUpload);
    assert.deepEqual(
      (emu.job(copy.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>).map((l) => l.path),
      [styleUrl, styleUrl],
    );
  });

  it('concurrent requests for a new file share one upload; URLs and repo ids pass through untouched', async () => {
    const before = uploads();
    const loras = [{ path: './sub/other.safetensors' }, { path: 'owner/repo' }, { path: 'https://example.com/w.safetensors' }];
    const [a, b] = await Promise.all([generate(service, loras), generate(service, loras)]);
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    const sentA = emu.job(a.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>;
    const sentB = emu.job(b.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>;
    assert.equal(sentA[0]!.path, sentB[0]!.path);
    assert.deepEqual(sentA.slice(1), [{ path: 'owner/repo' }, { path: 'https://example.com/w.safetensors' }]);
    // One upload is an initiate and a PUT.
    assert.equal(uploads() - before, 2);
  });

  it('the cache is persisted under DATA_DIR: a restarted service does not upload again', async () => {
    const cache = JSON.parse(await readFile(join(dataDir, 'lora-uploads.json'), 'utf8')) as { entries: Array<{ url: string; target: string }> };
    assert.ok(cache.entries.some((e) => e.url === styleUrl && e.target === emu.url));
    await service.close();
    service = await start();
    const before = uploads();
    const res = await generate(service, [{ path: './style.safetensors' }]);
    assert.equal(res.status, 200);
    assert.equal(uploads(), before, 'no upload after the restart');
    assert.equal((emu.job(res.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>)[0]!.path, styleUrl);
  });

  const refusals: Array<[string, string, RegExp]> = [
    ['an absolute path outside LORA_DIR', '/etc/passwd', /must be under this server's LORA_DIR/],
    ['a file in a sibling directory', '', /must be under this server's LORA_DIR/], // filled in below
    ['a symlink that leaves LORA_DIR', './escape.safetensors', /symbolic link.*outside LORA_DIR/],
    ['a file under a symlinked directory that leaves LORA_DIR', './escape-dir/secret.safetensors', /outside LORA_DIR/],
    ['a missing file', './missing.safetensors', /no such file under LORA_DIR/],
    ['a directory', './adir', /not a regular file/],
    ['LORA_DIR itself', './', /must be an https/],
    ['.. inside a relative path', './sub/../../outside/secret.safetensors', /must be an https/],
    ['.. inside an absolute path', '', /must be an https/], // filled in below
    ['a parent-relative path', '../outside/secret.safetensors', /must be an https/],
    ['file:', 'file:///etc/passwd', /must be an https/],
    ['http:', 'http://example.com/w.safetensors', /http:, file: and "\.\." are not accepted/],
    ['a home-relative path', '~/w.safetensors', /must be an https/],
    ['a Windows path', 'C:\\loras\\w.safetensors', /must be an https/],
    ['a NUL byte', './style.safetensors\u0000.png', /must be an https/],
  ];
  for (const [what, p, pattern] of refusals) {
    it(`refuses ${what} with a 400 naming loras, before any reservation or fal call`, async () => {
      const path =
        p !== '' ? p : what.startsWith('a file in a sibling') ? join(outside, 'secret.safetensors') : `${loraDir}/../outside/secret.safetensors`;
      const [rows, jobs, ups] = [await requestRows(service), emu.jobs().length, uploads()];
      const res = await generate(service, [{ path: 'owner/repo' }, { path }]);
      assert.equal(res.status, 400, `${path}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.param, 'loras');
      assert.equal(res.body.error.type, 'invalid_request_error');
      assert.match(res.body.error.message, /loras\[1\]\.path/);
      assert.match(res.body.error.message, pattern);
      assert.equal(await requestRows(service), rows, 'nothing reserved');
      assert.equal(emu.jobs().length, jobs, 'no fal job');
      assert.equal(uploads(), ups, 'no upload');
    });
  }

  it('refuses a file over LORA_MAX_BYTES with a 400 naming loras, before anything is read or reserved; one under it is uploaded', async () => {
    const s = await start({ LORA_MAX_BYTES: '3000', DATA_DIR: join(root, 'data-max') });
    try {
      const [rows, jobs, ups] = [await requestRows(s), emu.jobs().length, uploads()];
      const big = await generate(s, [{ path: './style.safetensors' }]);
      assert.equal(big.status, 400);
      assert.equal(big.body.error.param, 'loras');
      assert.match(big.body.error.message, /loras\[0\]\.path: the file is 4096 bytes; this server uploads LoRA files of at most 3000 bytes \(LORA_MAX_BYTES\)/);
      assert.deepEqual([await requestRows(s), emu.jobs().length, uploads()], [rows, jobs, ups], 'nothing reserved, submitted or uploaded');
      const small = await generate(s, [{ path: './sub/other.safetensors' }]);
      assert.equal(small.status, 200, JSON.stringify(small.body));
      assert.ok(uploads() > ups, 'uploaded');
      const sent = (emu.job(small.body.meta.fal_request_id)?.input['loras'] as Array<{ path: string }>)[0]!.path;
      const stored = Buffer.from(await (await fetch(sent)).arrayBuffer());
      assert.ok(stored.equals(await readFile(join(loraDir, 'sub', 'other.safetensors'))), 'fal storage holds the file, streamed from disk');
    } finally {
      await s.close();
    }
  });

  it('refuses every local path when LORA_DIR is not set', async () => {
    const s = await startService(
      loadConfig({ PORT: '0', API_KEYS: TEST_KEY, FAL_BASE_URL: emu.url, FAL_KEY: 'k', DATA_DIR: join(root, 'data2'), LOG_LEVEL: 'silent' }),
      { emulator: emu },
    );
    try {
      const res = await generate(s, [{ path: './style.safetensors' }]);
      assert.equal(res.status, 400);
      assert.equal(res.body.error.param, 'loras');
      assert.match(res.body.error.message, /LORA_DIR is not set/);
      assert.equal((await generate(s, [{ path: 'owner/repo' }])).status, 200, 'remote forms still work');
    } finally {
      await s.close();
    }
  });

  it('a failed upload is a 502 with no job and no charge, and the next request uploads', async () => {
    await writeFile(join(loraDir, 'fresh.safetensors'), randomBytes(1024));
    const rows = await requestRows(service);
    const jobs = emu.jobs().length;
    emu.armFault({ phase: 'upload', status: 500, times: 3 });
    const res = await generate(service, [{ path: './fresh.safetensors' }]);
    assert.equal(res.status, 502, JSON.stringify(res.body));
    assert.equal(res.body.error.code, 'upstream_upload_failed');
    assert.equal(emu.jobs().length, jobs);
    assert.equal(await requestRows(service), rows);
    emu.clearFaults();
    const ok = await generate(service, [{ path: './fresh.safetensors' }]);
    assert.equal(ok.status, 200);
  });

  it('LORA_DIR must be an existing directory', () => {
    assert.throws(() => loadConfig({ FAL_KEY: 'k', LORA_DIR: join(root, 'nope') }), /LORA_DIR must be an existing directory/);
    assert.throws(() => loadConfig({ FAL_KEY: 'k', LORA_DIR: join(loraDir, 'style.safetensors') }), /LORA_DIR must be an existing directory/);
  });
});
