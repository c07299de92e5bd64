import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { until } from '../helpers/service-process.js';
import { imageServiceOver } from '../helpers/image-service.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import type { Media } from '../../src/images/media.js';
import { ApiError } from '../../src/errors.js';
import { createLeaseStore } from '../../src/metering/lease-store.js';
import { createLedger, type Ledger } from '../../src/metering/ledger.js';
import { parseMarkup, parseUsd } from '../../src/metering/money.js';
import { createPendingCloses } from '../../src/metering/pending-closes.js';
import { createReconciler } from '../../src/metering/reconcile.js';
import { settleCompleted } from '../../src/metering/settlement.js';
import { requestRow } from '../helpers/requests.js';

/** What the database driver throws when the ledger cannot be reached (src/db/errors.ts counts it as unavailable). */
const unreachable = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });

/**
 * How a request's row is closed when the close does not simply go through
 * (src/images/closing.ts), through the real service, @fal-ai/client and the
 * emulator: a request another process took over (this one's lease had
 * expired) gets neither its row written nor an answer; a close the ledger
 * could not take survives the process (DATA_DIR/pending-closes) and the
 * next reconciliation round closes it uncharged; a process whose lease is
 * not known live takes no request.
 */

const MODEL = 'alibaba/z-image-turbo';

const media: Media = { clientUrl: (_r, u) => u, b64Item: async () => ({ b64_json: 'aGVsbG8=' }), proxyTarget: () => null };

describe('closing a request', () => {
  let t: TestService;
  before(async () => {
    // Renewals far apart: a test can let this process's lease lapse in the database while the process still trusts it.
    t = await startTestService({ LEASE_RENEW_MS: '30000', LEASE_EXPIRY_MS: '60000', RECONCILE_INTERVAL_MS: '0' });
  });
  after(async () => {
    await t.close();
  });

  const post = (requestId: string, prompt: string) =>
    fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'x-request-id': requestId },
      body: JSON.stringify({ model: MODEL, prompt, image_size: 'square' }),
    });
  const falJob = (tag: string) => t.emulator.jobs().find((j) => String(j.input.prompt).includes(tag));

  it('taken over by another process while its job ran: this one writes neither the row nor an answer; the new owner settles it as unanswered', async () => {
    const s = t.service;
    t.emulator.armFault({ kind: 'never_finish', prompt_contains: 'taken-over' });
    const answer = post('req-taken-over', 'taken-over a quiet harbour').then(
      (r) => r.status,
      (err: Error) => `no answer: ${err.message}`,
    );
    const job = await until(() => falJob('taken-over')?.status === 'IN_PROGRESS' && falJob('taken-over'), 'the job to run');
    // This process's renewals stop reaching the database (as when it is unreachable): its lease expires there.
    const taken = (await requestRow(s, 'req-taken-over'))!;
    const owner = taken.leaseId!;
    await s.database.db.updateTable('leases').set({ expires_at: new Date(Date.now() - 1_000).toISOString() }).where('id', '=', owner).execute();
    const store = createLeaseStore(s.database);
    const peer = await store.acquire({ id: `peer-${Math.random()}`, host: 'elsewhere', pid: 2, expiryMs: 60_000 });
    const peerRound = () =>
      createReconciler({ ledger: createLedger(s.database, { leaseId: peer.id }), fal: s.fal, registry: s.registry, markup: parseMarkup('1'), logger: s.logger, leases: { store, ownLeaseId: peer.id }, inFlight: () => false }).run({ olderThanMs: 3_600_000 });
    const first = await peerRound();
    assert.deepEqual(first.adopted, [taken.id]);
    assert.deepEqual(first.running, [taken.id], 'still running at fal');

    t.emulator.finishJob(job.request_id);
    assert.match(String(await answer), /^no answer/, 'the connection is closed without an answer');
    assert.ok(t.logs.some((l) => String(l.msg).startsWith('lease lost: another process took this request over')));
    const untouched = (await requestRow(s, 'req-taken-over'))!;
    assert.equal(untouched.status, 'reserved', 'the old owner wrote nothing');
    assert.equal(untouched.leaseId, peer.id);

    const second = await peerRound();
    assert.deepEqual(second.settled, [taken.id]);
    const row = (await requestRow(s, 'req-taken-over'))!;
    const billed = t.emulator.billing().find((b) => b.request_id === job.request_id)!;
    assert.equal(row.upstreamCostMicros, parseUsd(billed.usd));
    assert.ok(row.chargeMicros > 0n, 'no answer was written: charged for the images fal completed, once');
    await store.release(peer.id);
  });

  it('the ledger lost after the jobs ran, and the process gone before it came back: the next round on its DATA_DIR closes the request uncharged', async () => {
    const s = t.service;
    const dir = await mkdtemp(join(tmpdir(), 'gw-pending-'));
    try {
      const pending = createPendingCloses(dir);
      // A process whose ledger takes the reservation and the job's id, then nothing more.
      let down = false;
      const failing: Ledger = {
        ...s.ledger,
        settleJobs: (input) => (down ? Promise.reject(unreachable()) : s.ledger.settleJobs(input)),
        release: (input) => (down ? Promise.reject(unreachable()) : s.ledger.release(input)),
        recordSubmit: async (input) => {
          const out = await s.ledger.recordSubmit(input);
          down = true;
          return out;
        },
      };
      const images = imageServiceOver({ fal: s.fal, ledger: failing, media, markup: parseMarkup('1'), requestTimeoutMs: 60_000, logger: s.logger, pendingCloses: pending });
      const canonical = normalizeRequest(s.registry, { model: MODEL, prompt: 'ledger-lost a quiet harbour', size: '512x512' });
      const keyId = (await s.keys.create({ name: 'pending close', budgetMicros: null })).record.id;
      await assert.rejects(images.generate(canonical, { requestId: 'req-ledger-lost', keyId, publicBaseUrl: 'http://gw' }), (err: unknown) => err instanceof ApiError && err.status === 503 && err.code === 'metering_unavailable');
      assert.equal((await readdir(dir)).length, 1, 'the close is on disk before the caller is answered');
      assert.equal(images.inFlight('req-ledger-lost'), true, 'retried in the background meanwhile');
      // The process dies here. The request is still open: left alone, a round would take its caller for gone and charge it.
      const open = (await requestRow(s, 'req-ledger-lost'))!;
      assert.equal(open.status, 'reserved');
      assert.equal(open.jobs[0]!.status, 'submitted');

      const report = await createReconciler({ ledger: s.ledger, fal: s.fal, registry: s.registry, markup: parseMarkup('1'), logger: s.logger, pendingCloses: pending }).run({ olderThanMs: 0 });
      assert.deepEqual(report.pendingClosed, ['req-ledger-lost']);
      const row = (await requestRow(s, 'req-ledger-lost'))!;
      assert.equal(row.status, 'failed');
      assert.equal(row.errorCode, 'metering_unavailable');
      assert.equal(row.chargeMicros, 0n, 'answered 503: never charged');
      const billed = t.emulator.billing().find((b) => b.request_id === row.jobs[0]!.falRequestId)!;
      assert.equal(row.jobs[0]!.status, 'completed');
      assert.equal(row.upstreamCostMicros, parseUsd(billed.usd), 'fal’s cost recorded, as unrecovered');
      assert.deepEqual(await readdir(dir), [], 'the file is gone once the close is done');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('to be answered with an error, but settled first elsewhere on its completed job: answered with that job’s images, at that charge', async () => {
    const s = t.service;
    // Two jobs (n=6, four per job): one fails at fal; both results reach this process only after a pause.
    t.emulator.armFault([
      { kind: 'fail_after_start', status: 422, prompt_contains: 'elsewhere' },
      { kind: 'delay', phase: 'result', delay_ms: 5_000, prompt_contains: 'elsewhere', times: 2 },
    ]);
    const resultsBefore = t.emulator.stats().result ?? 0;
    const answer = fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'x-request-id': 'req-elsewhere' },
      body: JSON.stringify({ model: MODEL, prompt: 'elsewhere a quiet harbour', image_size: 'square', n: 6 }),
    });
    // While this process waits on both results, the job that completed is settled elsewhere.
    await until(() => (t.emulator.stats().result ?? 0) >= resultsBefore + 2 || undefined, 'both results to be asked for');
    const row = (await requestRow(s, 'req-elsewhere'))!;
    const done = t.emulator.jobs().filter((j) => String(j.input.prompt).includes('elsewhere') && j.outcome === 'ok');
    assert.equal(done.length, 1);
    const model = s.registry.lookup(MODEL)!;
    const r = await s.fal.result(model.endpoint, done[0]!.request_id);
    const jobId = row.jobs.find((j) => j.falRequestId === done[0]!.request_id)!.id;
    const elsewhere = await settleCompleted(s.ledger, model, row.id, { promptExpansion: false, markup: parseMarkup('1') }, [{ jobId, falRequestId: r.falRequestId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits }]);
    assert.equal(elsewhere.settled, true, 'settled here first, as a reconciliation that took the caller for gone would');

    const res = await answer;
    const body = (await res.json()) as { data: unknown[] };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.data.length, r.output.images.length, 'the completed job’s images');
    assert.equal(parseUsd(res.headers.get('x-usage-cost-usd')!), elsewhere.charge.micros);
    assert.equal((await requestRow(s, 'req-elsewhere'))!.chargeMicros, elsewhere.charge.micros, 'charged once, what the answer says');
  });

  it('a process whose lease is not known live takes no request: 503, nothing reserved, nothing sent to fal', async () => {
    const s = t.service;
    const images = imageServiceOver({ fal: s.fal, ledger: s.ledger, media, markup: parseMarkup('1'), requestTimeoutMs: 60_000, logger: pino({ level: 'silent' }), lease: { id: 'lapsed', valid: () => false } });
    const canonical = normalizeRequest(s.registry, { model: MODEL, prompt: 'lease-invalid a quiet harbour', size: '512x512' });
    const keyId = (await s.keys.create({ name: 'lapsed', budgetMicros: null })).record.id;
    const jobsBefore = t.emulator.jobs().length;
    await assert.rejects(images.generate(canonical, { requestId: 'req-lease-invalid', keyId, publicBaseUrl: 'http://gw' }), (err: unknown) => err instanceof ApiError && err.status === 503 && err.code === 'lease_expired');
    assert.equal(await requestRow(s, 'req-lease-invalid'), null);
    assert.equal(t.emulator.jobs().length, jobsBefore);
  });
});
