import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { parseUsd } from '../../src/metering/money.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * End to end: fal ignores `sync_mode` (the emulator's `ignore_sync_mode`
 * fault) and answers a b64_json request with an image URL. The service
 * downloads it from an allowed host, and refuses one that is not allowed,
 * after fal completed (and billed) the job.
 */

const body = { model: 'alibaba/z-image-turbo', prompt: 'a heron on one leg', image_size: 'square', response_format: 'b64_json', seed: 5 };
const PNG_MAGIC = '89504e470d0a1a0a';

describe('b64_json when fal answers with a URL', () => {
  const services: TestService[] = [];
  after(async () => {
    await Promise.all(services.map((s) => s.close()));
  });

  it('downloads it from the FAL_BASE_URL host (allowed by default)', async () => {
    const t = await startTestService();
    services.push(t);
    t.emulator.armFault({ kind: 'ignore_sync_mode' });
    const filesBefore = t.emulator.stats()['files'] ?? 0;
    const res = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const bytes = Buffer.from(res.body.data[0].b64_json, 'base64');
    assert.equal(bytes.subarray(0, 8).toString('hex'), PNG_MAGIC);
    assert.equal((t.emulator.stats()['files'] ?? 0) - filesBefore, 1, 'the service fetched the image from the emulator');
    const job = t.emulator.job(res.body.meta.fal_request_id);
    assert.equal(job?.resolved['sync_mode'], true, 'we asked for a data URI');
    assert.equal(job?.ignore_sync_mode, true);
  });

  it('refuses a host that is not allowed: 502 upstream_media_error, no retry, the caller not charged, fal’s bill recorded as upstream cost', async () => {
    const t = await startTestService({ IMAGE_HOSTS_ALLOWED: 'fal.media,*.fal.media' });
    services.push(t);
    t.emulator.armFault({ kind: 'ignore_sync_mode' });
    const filesBefore = t.emulator.stats()['files'] ?? 0;
    const res = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(res.status, 502);
    assert.equal(res.body.error.type, 'upstream_error');
    assert.equal(res.body.error.code, 'upstream_media_error');
    assert.equal(res.headers['x-should-retry'], 'false');
    assert.equal((t.emulator.stats()['files'] ?? 0) - filesBefore, 0, 'nothing was fetched');

    const row = await t.service.ledger.getRequest(res.headers['x-request-id'] as string);
    assert.equal(row?.status, 'failed', 'answered with an error: never charged');
    assert.equal(row?.chargeMicros, 0n);
    assert.equal(row?.jobs.length, 1);
    const falId = row!.jobs[0]!.falRequestId;
    const billed = t.emulator.billing().filter((b) => b.request_id === falId);
    assert.equal(billed.length, 1, 'fal billed it');
    assert.equal(row!.jobs[0]!.status, 'completed');
    assert.equal(row!.upstreamCostMicros, parseUsd(billed[0]!.usd), 'what fal billed is upstream cost, unrecovered');
    const refusal = t.logs.find((l) => l.msg === 'could not deliver images');
    assert.match(String(refusal?.['err']), /not in IMAGE_HOSTS_ALLOWED/);

    // Without the fault, data URIs need no download and still work under the same list.
    const ok = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send(body);
    assert.equal(ok.status, 200);
  });
});
