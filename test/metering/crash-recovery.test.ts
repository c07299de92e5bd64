import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import { createDatabase, type Database } from '../../src/db/index.js';
import { createLedger } from '../../src/metering/ledger.js';
import { parseUsd } from '../../src/metering/money.js';
import { TEST_KEY } from '../helpers/service.js';
import { startServiceProcess, until, type ServiceProcess as Proc } from '../helpers/service-process.js';

/**
 * SIGKILL the service with jobs in flight, start it again on the same data,
 * and show that nothing fal billed is lost: every billed job is in the ledger
 * with fal's units and cost, every reconciled request is charged on its
 * images, and a request killed before fal answered its submit is found in
 * fal's request listing by its input and settled like the others.
 *
 * Reconciliation runs on its defaults (RECONCILE_AFTER_MS is
 * REQUEST_TIMEOUT_MS + 60 s, RECONCILE_INTERVAL_MS 60 s): the dead process's
 * requests are settled because its lease expired (src/metering/leases.ts),
 * which neither the age rule nor the interval's first round could do before
 * the deadline below.
 */

describe('crash recovery', () => {
  let emulator: Emulator;
  let dataDir: string;
  let database: Database | undefined;
  const procs: Proc[] = [];

  before(async () => {
    emulator = await startEmulator({ port: 0, latencyMs: 1500 });
    dataDir = await mkdtemp(join(tmpdir(), 'gw-crash-'));
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await database?.close();
    await emulator.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('reconciles every job fal billed after a SIGKILL, the one whose submit never answered included', async (t) => {
    const env = { FAL_BASE_URL: emulator.url, FAL_KEY: 'k', API_KEYS: TEST_KEY, DATA_DIR: dataDir };
    const first = await startServiceProcess(env);
    procs.push(first);
    // One submit is held by the emulator so that the kill lands between
    // sending it and learning its fal id: only fal's listing can name its job.
    emulator.armFault({ phase: 'submit', kind: 'delay', delay_ms: 5000, prompt_contains: 'held' });
    const prompts = ['crash a', 'crash b', 'crash c', 'crash d', 'held submit'];
    const inflight = prompts.map((prompt, i) =>
      fetch(`${first.url}/v1/images/generations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'alibaba/z-image-turbo', prompt, image_size: i % 2 ? 'square' : 'landscape_16_9', num_images: 1 + (i % 3) }),
      }).catch(() => 'connection lost'),
    );
    // Kill once the ledger has saved the four ordinary jobs' fal ids, while the
    // held submit is still unanswered.
    database = await createDatabase({ dataDir });
    const db = database.db;
    await until(async () => (await db.selectFrom('upstream_jobs').select('fal_request_id').where('fal_request_id', 'is not', null).execute()).length === 4, 'four fal ids saved');
    assert.equal(emulator.jobs().filter((j) => String(j.input.prompt).startsWith('held')).length, 0, 'the held submit is unanswered');
    first.child.kill('SIGKILL');
    await first.exited;
    const answers = await Promise.all(inflight);
    assert.ok(answers.every((a) => a === 'connection lost'), 'no request was answered before the kill');

    // Let every job finish at fal (and be billed there) while we are down.
    await until(() => emulator.jobs().length === 5 && emulator.jobs().every((j) => j.status === 'COMPLETED'), 'jobs to finish at fal');
    assert.equal(emulator.billing().length, 5);

    const second = await startServiceProcess(env);
    procs.push(second);
    const restartedAt = Date.now();
    // Under the interval's first round (60 s), so only the lease rule can have settled them.
    const line = await until(() => second.lines.find((l) => l.msg === 'reconciled open requests'), 'the dead process’s requests to be reconciled', 50_000);
    const holdsClosedAfterMs = Date.now() - restartedAt;
    t.diagnostic(`holds closed ${holdsClosedAfterMs} ms after the restart (lease expiry 10 s)`);
    const report = line.reconcile as { settled: string[]; orphaned: string[]; lostFound: string[] };
    assert.equal(report.lostFound.length, 1, 'the held submit’s job was found in fal’s listing');
    assert.equal(report.settled.length, 5);
    assert.equal(report.orphaned.length, 0);

    const ledger = createLedger(database);
    const jobs = await database.db.selectFrom('upstream_jobs').selectAll().execute();
    const byFalId = new Map(jobs.map((j) => [j.fal_request_id, j]));
    const billedInLedger = emulator.billing().filter((b) => byFalId.has(b.request_id));
    assert.equal(billedInLedger.length, 5, 'every job fal billed is accounted for');
    for (const b of billedInLedger) {
      const j = byFalId.get(b.request_id)!;
      assert.equal(j.status, 'completed');
      assert.equal(Number(j.units_fal), Number(b.units), 'unit for unit');
      assert.equal(j.upstream_cost_micros, parseUsd(b.usd), 'upstream cost equals what fal billed');
    }
    // Caller charges follow the images fal returned, at markup 1.0 equal to fal's cost here.
    const settled = await database.db.selectFrom('requests').selectAll().where('status', '=', 'settled').execute();
    assert.equal(settled.length, 5);
    for (const r of settled) {
      assert.ok(r.charge_micros > 0n);
      assert.equal(r.charge_micros, r.upstream_cost_micros);
      assert.equal(r.credits, r.charge_micros * 2n);
    }
    assert.equal((await ledger.listOrphaned()).length, 0);
    // The held submit's job row, written before the submit left, took the id fal lists for its input.
    const held = emulator.jobs().find((j) => j.input.prompt === 'held submit')!;
    const heldRow = byFalId.get(held.request_id);
    assert.ok(heldRow, 'the held submit’s job is in the ledger under fal’s id');
    assert.equal(heldRow.id, report.lostFound[0]);
    const keys = await database.db.selectFrom('api_keys').selectAll().execute();
    assert.equal(keys.reduce((s, k) => s + k.reserved_micros, 0n), 0n, 'no reservation is left held');

    // The restarted process took the dead one's requests over before settling them, and the
    // dead lease's row went once no open request named it; the live one's goes on a graceful stop.
    const leases = await database.db.selectFrom('leases').selectAll().execute();
    assert.equal(leases.length, 1, 'only the live process’s lease is left');
    assert.ok(settled.every((r) => r.lease_id === leases[0]!.id), 'every request names the lease of the process that settled it');
    assert.ok(leases[0]!.expires_at > new Date().toISOString());
    second.child.kill('SIGTERM');
    await second.exited;
    assert.deepEqual(await database.db.selectFrom('leases').select('id').execute(), []);
  });
});
