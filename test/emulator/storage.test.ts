/**
 * Storage uploads, multipart in particular: @fal-ai/client 1.10.1 switches to
 * `initiate-multipart` + 10 MB part PUTs + `complete` for files over 90 MB.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { emulator, falClient, raw } from './helpers.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

/** `<upload_url path>/<part><upload_url search>`, built exactly as the client builds it. */
function partUrl(uploadUrl: string, part: number | string): string {
  const u = new URL(uploadUrl);
  return `${u.origin}${u.pathname}/${part}${u.search}`;
}

async function initiate(emu: Emulator, body: unknown = { content_type: 'application/x-big', file_name: 'big.bin' }) {
  const r = await raw(emu, 'POST', 'rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3', { body });
  assert.equal(r.status, 200, r.text);
  return r.json as { upload_url: string; file_url: string };
}

async function putPart(url: string, bytes: Uint8Array, headers: Record<string, string> = {}) {
  const res = await fetch(url, { method: 'PUT', body: bytes, headers });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

function complete(emu: Emulator, uploadUrl: string, body: unknown) {
  return raw(emu, 'POST', partUrl(uploadUrl, 'complete'), { body, key: null });
}

const bytesOf = (n: number, fill: number) => new Uint8Array(n).fill(fill);

describe('multipart storage uploads', () => {
  let emu: Emulator;
  before(async () => {
    emu = await startEmulator({ port: 0, latencyMs: 30 });
  });
  after(() => emu.close());

  test('the real client uploads a 95 MB Blob in parts and the file URL serves identical bytes', async () => {
    const data = new Uint8Array(95 * 1024 * 1024);
    randomFillSync(data);
    const before = emu.stats().upload ?? 0;
    const url = await falClient(emu).storage.upload(new Blob([data], { type: 'application/octet-stream' }));
    assert.ok(url.startsWith(`${emu.url}/v3.fal.media/files/`), url);
    // initiate-multipart, ten 10 MB parts, complete.
    assert.equal((emu.stats().upload ?? 0) - before, 12);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/octet-stream');
    const got = new Uint8Array(await res.arrayBuffer());
    assert.equal(got.length, data.length);
    assert.equal(sha256(got), sha256(data));
  });

  test("the client's part retries: one failed part PUT is absorbed, three fail the upload", async (t) => {
    const own = await emulator(t);
    const data = new Uint8Array(91 * 1024 * 1024);
    randomFillSync(data);
    const blob = new Blob([data], { type: 'application/x-retry' });
    // The first upload-phase call is the initiate: a zero delay lets it through.
    own.armFault([
      { kind: 'delay', phase: 'upload', delay_ms: 0 },
      { phase: 'upload', status: 500, times: 1 },
    ]);
    const url = await falClient(own).storage.upload(blob);
    // initiate, part 1 twice, parts 2..10, complete.
    assert.equal(own.stats().upload, 13);
    assert.equal(sha256(new Uint8Array(await (await fetch(url)).arrayBuffer())), sha256(data));

    own.armFault([
      { kind: 'delay', phase: 'upload', delay_ms: 0 },
      { phase: 'upload', status: 500, times: 3 },
    ]);
    await assert.rejects(falClient(own).storage.upload(blob), /Part upload failed, retries exhausted/);
    assert.equal(own.stats().upload, 13 + 4);
  });

  test('parts answer {partNumber, etag} and an ETag header; complete assembles them in order', async () => {
    const { upload_url, file_url } = await initiate(emu);
    const u = new URL(upload_url);
    assert.match(u.pathname, /^\/v3\.fal\.media\/files\/upload\/multipart\/[0-9a-f]+$/);
    assert.ok(u.searchParams.get('upload_token'), 'the upload token travels in the query string');
    const a = bytesOf(1000, 1);
    const b = bytesOf(500, 2);
    const p2 = await putPart(partUrl(upload_url, 2), b);
    assert.equal(p2.status, 200);
    assert.deepEqual(p2.json, { partNumber: 2, etag: md5(b) });
    assert.equal(p2.headers.get('etag'), `"${md5(b)}"`);
    const p1 = await putPart(partUrl(upload_url, 1), a);
    assert.equal(p1.json.etag, md5(a));
    // Nothing is served before complete.
    assert.equal((await fetch(file_url)).status, 404);
    // The quoted header form of an etag is accepted too (S3-style clients send that).
    const done = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag: p1.json.etag }, { partNumber: 2, etag: `"${md5(b)}"` }] });
    assert.equal(done.status, 200, done.text);
    assert.equal(done.json.file_url, file_url);
    const res = await fetch(file_url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/x-big');
    const got = new Uint8Array(await res.arrayBuffer());
    assert.equal(sha256(got), sha256(Buffer.concat([a, b])));
  });

  test('a part sent again replaces the earlier one (and its etag)', async () => {
    const { upload_url, file_url } = await initiate(emu);
    const first = await putPart(partUrl(upload_url, 1), bytesOf(10, 7));
    const second = await putPart(partUrl(upload_url, 1), bytesOf(12, 8));
    assert.notEqual(first.json.etag, second.json.etag);
    const stale = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag: first.json.etag }] });
    assert.equal(stale.status, 400);
    const ok = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag: second.json.etag }] });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(new Uint8Array(await (await fetch(file_url)).arrayBuffer()), bytesOf(12, 8));
  });

  test('complete refuses bad part lists with 400 {detail} and keeps the parts for another try', async () => {
    const { upload_url, file_url } = await initiate(emu);
    const e1 = (await putPart(partUrl(upload_url, 1), bytesOf(100, 1))).json.etag as string;
    const e2 = (await putPart(partUrl(upload_url, 2), bytesOf(100, 2))).json.etag as string;
    const bad: Array<[string, unknown]> = [
      ['no parts field', {}],
      ['empty list', { parts: [] }],
      ['missing etag', { parts: [{ partNumber: 1 }, { partNumber: 2, etag: e2 }] }],
      ['empty etag', { parts: [{ partNumber: 1, etag: '' }, { partNumber: 2, etag: e2 }] }],
      ['mismatched etag', { parts: [{ partNumber: 1, etag: e2 }, { partNumber: 2, etag: e2 }] }],
      ['duplicate part', { parts: [{ partNumber: 1, etag: e1 }, { partNumber: 1, etag: e1 }, { partNumber: 2, etag: e2 }] }],
      ['out of order', { parts: [{ partNumber: 2, etag: e2 }, { partNumber: 1, etag: e1 }] }],
      ['part never uploaded', { parts: [{ partNumber: 1, etag: e1 }, { partNumber: 2, etag: e2 }, { partNumber: 3, etag: e2 }] }],
      ['uploaded part left out', { parts: [{ partNumber: 1, etag: e1 }] }],
      ['part number not an integer', { parts: [{ partNumber: '1', etag: e1 }, { partNumber: 2, etag: e2 }] }],
      ['not JSON', '{"parts": ['],
    ];
    for (const [why, body] of bad) {
      const r = await complete(emu, upload_url, body);
      assert.equal(r.status, 400, `${why}: ${r.text}`);
      assert.equal(typeof r.json.detail, 'string', why);
    }
    assert.equal((await fetch(file_url)).status, 404);
    const ok = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag: e1 }, { partNumber: 2, etag: e2 }] });
    assert.equal(ok.status, 200, ok.text);
    assert.equal((await fetch(file_url)).status, 200);
  });

  test('a completed upload cannot be reused: parts and complete answer 404', async () => {
    const { upload_url } = await initiate(emu);
    const etag = (await putPart(partUrl(upload_url, 1), bytesOf(5, 5))).json.etag as string;
    assert.equal((await complete(emu, upload_url, { parts: [{ partNumber: 1, etag }] })).status, 200);
    const again = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag }] });
    assert.equal(again.status, 404);
    assert.equal(typeof again.json.detail, 'string');
    assert.equal((await putPart(partUrl(upload_url, 2), bytesOf(5, 5))).status, 404);
  });

  test('unknown upload 404, wrong or missing token 403, bad part number 400, wrong method 405', async () => {
    const { upload_url } = await initiate(emu);
    const u = new URL(upload_url);
    const unknown = `${u.origin}${u.pathname.replace(/[0-9a-f]+$/, 'f'.repeat(24))}/1${u.search}`;
    const r404 = await putPart(unknown, bytesOf(3, 1));
    assert.equal(r404.status, 404);
    assert.equal(typeof r404.json.detail, 'string');
    assert.equal((await raw(emu, 'POST', `${unknown.replace(/\/1\?/, '/complete?')}`, { body: { parts: [] }, key: null })).status, 404);
    const noToken = await putPart(`${u.origin}${u.pathname}/1`, bytesOf(3, 1));
    assert.equal(noToken.status, 403);
    assert.match(noToken.json.detail, /query string/);
    assert.equal((await putPart(`${u.origin}${u.pathname}/1?upload_token=nope`, bytesOf(3, 1))).status, 403);
    for (const n of ['0', '10001', 'abc', '01', '-1']) {
      const r = await putPart(partUrl(upload_url, n), bytesOf(3, 1));
      assert.equal(r.status, 400, `part ${n}`);
      assert.equal(typeof r.json.detail, 'string');
    }
    assert.equal((await raw(emu, 'GET', partUrl(upload_url, 1), { key: null })).status, 405);
    assert.equal((await raw(emu, 'PUT', partUrl(upload_url, 'complete'), { body: {}, key: null })).status, 405);
    assert.equal((await raw(emu, 'PUT', upload_url, { body: 'x', key: null })).status, 404);
  });

  test('initiate-multipart needs the key and a content_type', async () => {
    const noKey = await raw(emu, 'POST', 'rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3', {
      body: { content_type: 'a/b', file_name: 'x' },
      key: null,
    });
    assert.equal(noKey.status, 401);
    const noType = await raw(emu, 'POST', 'rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3', { body: { file_name: 'x' } });
    assert.equal(noType.status, 422);
    assert.deepEqual(noType.json.detail[0].loc, ['body', 'content_type']);
  });

  test('the upload fault phase hits part PUTs and complete', async () => {
    const { upload_url, file_url } = await initiate(emu);
    emu.armFault({ phase: 'upload', status: 503, times: 1 });
    const faulted = await putPart(partUrl(upload_url, 1), bytesOf(8, 3));
    assert.equal(faulted.status, 503);
    const etag = (await putPart(partUrl(upload_url, 1), bytesOf(8, 3))).json.etag as string;
    // Per-call header fault: the phase defaults to upload on the CDN host.
    const viaHeader = await putPart(partUrl(upload_url, 2), bytesOf(8, 4), { 'x-emulator-fault': JSON.stringify({ status: 502 }) });
    assert.equal(viaHeader.status, 502);
    emu.armFault({ phase: 'upload', status: 500, times: 1 });
    const failedComplete = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag }] });
    assert.equal(failedComplete.status, 500);
    const ok = await complete(emu, upload_url, { parts: [{ partNumber: 1, etag }] });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(new Uint8Array(await (await fetch(file_url)).arrayBuffer()), bytesOf(8, 3));
    assert.deepEqual(emu.faults().map((f) => f.remaining), [0, 0]);
  });

  test('reset forgets unfinished multipart uploads', async (t) => {
    const own = await emulator(t);
    const { upload_url } = await initiate(own);
    assert.equal((await putPart(partUrl(upload_url, 1), bytesOf(4, 4))).status, 200);
    own.reset();
    assert.equal((await putPart(partUrl(upload_url, 2), bytesOf(4, 4))).status, 404);
  });
});

describe('multipart storage limits', () => {
  test('a file is capped at the store size (413); pending parts count against the store (507); completed files are evicted for room', async (t) => {
    const KiB = 1024;
    const emu = await emulator(t, { storageBytes: 1024 * KiB });
    const a = await initiate(emu);
    const partA = bytesOf(600 * KiB, 1);
    const etagA = (await putPart(partUrl(a.upload_url, 1), partA)).json.etag as string;
    const tooBig = await putPart(partUrl(a.upload_url, 2), bytesOf(600 * KiB, 2));
    assert.equal(tooBig.status, 413);
    assert.equal(typeof tooBig.json.detail, 'string');

    // Upload A's 600 KiB part is held, so another upload's 600 KiB part does not fit.
    const b = await initiate(emu);
    const full = await putPart(partUrl(b.upload_url, 1), bytesOf(600 * KiB, 3));
    assert.equal(full.status, 507);
    assert.match(full.json.detail, /full/);

    // Once A is a completed file it can be evicted (oldest first) to make room for B.
    assert.equal((await complete(emu, a.upload_url, { parts: [{ partNumber: 1, etag: etagA }] })).status, 200);
    assert.equal((await fetch(a.file_url)).status, 200);
    const partB = bytesOf(600 * KiB, 3);
    const etagB = (await putPart(partUrl(b.upload_url, 1), partB)).json.etag as string;
    assert.equal((await fetch(a.file_url)).status, 404, 'the older file was evicted');
    assert.equal((await complete(emu, b.upload_url, { parts: [{ partNumber: 1, etag: etagB }] })).status, 200);
    assert.equal(sha256(new Uint8Array(await (await fetch(b.file_url)).arrayBuffer())), sha256(partB));
  });
});
