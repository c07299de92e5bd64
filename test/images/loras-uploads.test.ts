import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import request from 'supertest';
import { loadConfig } from '../../src/config.js';
import { startService } from '../../src/service.js';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createFalGateway } from '../../src/fal/gateway.js';
import { createLoraResolver } from '../../src/images/loras.js';
import { TEST_KEY } from '../helpers/service.js';

/**
 * LoRA uploads meeting fal's storage as it is (src/images/loras.ts): files
 * over 90 MB go up through the client's multipart API, and a cached URL lives
 * only as long as fal keeps the file. In the integration tier: the 95 MB file.
 */

const silent = pino({ level: 'silent' });
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function writeRandomFile(path: string, bytes: number): Promise<string> {
  const hash = createHash('sha256');
  const out = createWriteStream(path);
  const chunk = Buffer.alloc(4 * 1024 * 1024);
  for (let left = bytes; left > 0; left -= chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, left));
    randomFillSync(part);
    hash.update(part);
    if (!out.write(part)) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
  return hash.digest('hex');
}

describe('LoRA uploads against fal storage', () => {
  let emu: Emulator;
  let root: string;
  let loraDir: string;
  before(async () => {
    emu = await startEmulator({ port: 0, latencyMs: 20, imageMode: 'cheap' });
    root = await mkdtemp(join(tmpdir(), 'gw-lora-uploads-'));
    loraDir = join(root, 'loras');
    await mkdir(loraDir);
  });
  after(async () => {
    await emu.close();
    await rm(root, { recursive: true, force: true });
  });

  const resolver = (dataDir: string, extra: Partial<Parameters<typeof createLoraResolver>[0]> = {}) =>
    createLoraResolver({ loraDir, dataDir, fal: createFalGateway({ credentials: 'k:s', baseUrl: emu.url }), target: emu.url, logger: silent, ...extra });
  const input = (path: string) => ({ prompt: 'x', loras: [{ path }] });
  const pathOf = (resolved: Record<string, unknown>) => (resolved['loras'] as Array<{ path: string }>)[0]!.path;

  it('a 95 MB file goes up in 10 MB parts (initiate-multipart, parts, complete) and fal receives its URL', async () => {
    const file = join(loraDir, 'big.safetensors');
    const digest = await writeRandomFile(file, 95 * 1024 * 1024);
    const service = await startService(
      loadConfig({ PORT: '0', API_KEYS: TEST_KEY, FAL_BASE_URL: emu.url, FAL_KEY: 'fal-test-key', DATA_DIR: join(root, 'svc'), LORA_DIR: loraDir, LOG_LEVEL: 'silent' }),
      { emulator: emu },
    );
    try {
      const before = emu.stats()['upload'] ?? 0;
      const res = await request(service.url)
        .post('/v1/images/generations')
        .set('Authorization', `Bearer ${TEST_KEY}`)
        .send({ model: 'alibaba/z-image-turbo-lora', prompt: 'a fox', image_size: 'square', loras: [{ path: './big.safetensors' }] });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal((emu.stats()['upload'] ?? 0) - before, 12, 'initiate-multipart, ten parts, complete');
      const sent = pathOf(emu.job(res.body.meta.fal_request_id)!.input);
      const stored = new Uint8Array(await (await fetch(sent)).arrayBuffer());
      assert.equal(stored.length, 95 * 1024 * 1024);
      assert.equal(sha256(stored), digest, 'fal storage holds the file byte for byte');
    } finally {
      await service.close();
      await rm(file, { force: true });
    }
  });

  it('an upload lives as long as it asked fal for; once fal deleted it, the file is uploaded again', async () => {
    await writeFile(join(loraDir, 'short.safetensors'), randomBytes(2048));
    const loras = resolver(join(root, 'short-data'), { lifetimeS: 1, reuseMarginMs: 0 });
    const first = pathOf(await loras.resolve(input('./short.safetensors')));
    assert.equal((await fetch(first)).status, 200);
    // The emulator honours the lifetime the upload asked for (X-Fal-Object-Lifecycle).
    const deadline = Date.now() + 30_000;
    while ((await fetch(first)).status !== 404 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await fetch(first)).status, 404, 'fal deleted the file');
    const second = pathOf(await loras.resolve(input('./short.safetensors')));
    assert.notEqual(second, first);
    assert.equal((await fetch(second)).status, 200);
    assert.equal(loras.stats.uploads, 2);
  });

  it('a cached URL is used while it outlives the margin, and uploaded again from the moment it does not', async () => {
    await writeFile(join(loraDir, 'margin.safetensors'), randomBytes(2048));
    let clock = Date.now();
    const loras = resolver(join(root, 'margin-data'), { lifetimeS: 3600, reuseMarginMs: 600_000, now: () => clock });
    const uploadedAt = clock;
    const first = pathOf(await loras.resolve(input('./margin.safetensors')));
    clock = uploadedAt + 3_000_000 - 1;
    assert.equal(pathOf(await loras.resolve(input('./margin.safetensors'))), first);
    assert.deepEqual(loras.stats, { uploads: 1, cacheHits: 1 });
    clock = uploadedAt + 3_000_000;
    assert.notEqual(pathOf(await loras.resolve(input('./margin.safetensors'))), first, 'ten minutes before fal deletes it, a new upload');
    assert.equal(loras.stats.uploads, 2);
  });

  it('a cache entry that does not say when it expires (written before lifetimes were asked for) is uploaded again', async () => {
    const bytes = randomBytes(2048);
    await writeFile(join(loraDir, 'old.safetensors'), bytes);
    const dataDir = join(root, 'old-data');
    await mkdir(dataDir);
    const entry = { target: emu.url, sha256: sha256(bytes), url: `${emu.url}/v3.fal.media/files/gone/old.safetensors`, bytes: 2048, uploaded_at: new Date().toISOString() };
    await writeFile(join(dataDir, 'lora-uploads.json'), JSON.stringify({ entries: [entry] }));
    const loras = resolver(dataDir);
    const url = pathOf(await loras.resolve(input('./old.safetensors')));
    assert.notEqual(url, entry.url);
    assert.equal(loras.stats.uploads, 1);
  });

  it('LORA_UPLOAD_TTL_S must outlive a request: shorter than REQUEST_TIMEOUT_MS + 60 s is refused at start', () => {
    assert.equal(loadConfig({}).loraUploadTtlS, 7 * 86_400);
    assert.throws(() => loadConfig({ LORA_UPLOAD_TTL_S: '360', REQUEST_TIMEOUT_MS: '300000' }), /LORA_UPLOAD_TTL_S must be longer than REQUEST_TIMEOUT_MS \+ 60 s \(360 s\)/);
    assert.equal(loadConfig({ LORA_UPLOAD_TTL_S: '361', REQUEST_TIMEOUT_MS: '300000' }).loraUploadTtlS, 361);
  });
});
