import { it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServiceProcess, tail, type NodeChild } from '../../bench/lib/procs.js';
import { startEmulator } from '../../src/emulator/index.js';
import { auditLedger, formatAudit, readLedger, type CallerAnswer } from '../helpers/billing-audit.js';
import { describeEachDialect, serviceEnv, type TestStorage } from '../helpers/databases.js';
import { TEST_KEY } from '../helpers/service.js';
import { waitFor } from '../emulator/helpers.js';

/**
 * Issue 17's acceptance for idempotency: SIGKILL a service process while its
 * fal jobs and an `Idempotency-Key` request are in flight, restart it on its
 * defaults, and send the key again. SQLite runs one process; PostgreSQL runs
 * two, only one of which dies, and the retry goes to the survivor. Within
 * 10 s of the restart no hold is open; the retry answers with the images the
 * caller was charged for (reconciliation settled the request: no answer had
 * been written); once every fal job is final, the ledger equals the
 * emulator's billing log job for job (test/helpers/billing-audit.ts). The
 * survivor gets the retry at the kill: it must answer once the dead
 * process's lease expires, reconciling the request itself if need be, not
 * after REQUEST_TIMEOUT_MS.
 *
 * The emulator is a real HTTP server in this process; the services are
 * child processes (bench/lib/procs.ts), so the kill is a real SIGKILL.
 */

const MODEL = 'alibaba/z-image-turbo';
/** fal's time per job: the jobs are still running when the process dies. */
const LATENCY_MS = 5000;
const WITHIN_MS = 10_000;

interface Sent {
  requestId: string;
  answer: Promise<Response | 'connection lost'>;
  /** When the answer's head (or the connection's end) came. */
  answeredAt: Promise<number>;
}

function send(url: string, requestId: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Sent {
  const answer = fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_KEY}`, 'content-type': 'application/json', 'x-request-id': requestId, ...headers },
    body: JSON.stringify({ model: MODEL, ...body }),
  }).catch(() => 'connection lost' as const);
  return { requestId, answer, answeredAt: answer.then(() => Date.now()) };
}

describeEachDialect('SIGKILL with an Idempotency-Key request in flight', ({ dialect, fresh }) => {
  it('the restart closes every hold within 10 s, the retry answers with what was charged, and the ledger equals fal’s bill', { timeout: 180_000 }, async (t) => {
    // One cached image per size: rendering in this process would compete with the services for the CPUs.
    const emulator = await startEmulator({ port: 0, latencyMs: LATENCY_MS, imageMode: 'cheap' });
    const storage: TestStorage = await fresh();
    const logDir = await mkdtemp(join(tmpdir(), 'gw-idem-crash-'));
    const children: NodeChild[] = [];
    try {
      const dbEnv = dialect === 'sqlite' ? { DATA_DIR: storage.options.dataDir } : { ...(await serviceEnv(storage)), DATA_DIR: logDir };
      // Defaults otherwise: request timeout, reconciliation age and interval, leases.
      const env = { ...dbEnv, FAL_BASE_URL: emulator.url, FAL_KEY: 'crash-fal-key', API_KEYS: TEST_KEY, LOG_LEVEL: 'info' };
      const start = async (name: string) => {
        const child = await startServiceProcess(logDir, env, name);
        children.push(child);
        return child;
      };
      const doomed = await start('doomed');
      const survivor = dialect === 'postgres' ? await start('survivor') : undefined;
      const database = await storage.open();

      const idemKey = `idem-crash-${dialect}`;
      // n = 6 is two fal jobs (4 + 2): the answer is rebuilt from both, in job order.
      const idemBody = { prompt: 'idempotent in flight', image_size: 'square', n: 6, seed: 7 };
      const killed = [
        ...[1, 2, 3].map((n, i) => send(doomed.url, `${dialect}-killed-${i}`, { prompt: `killed ${i}`, image_size: i % 2 ? 'square' : 'landscape_16_9', n })),
        send(doomed.url, `${dialect}-killed-idem`, idemBody, { 'idempotency-key': idemKey }),
      ];
      const lived = survivor ? [1, 2].map((n, i) => send(survivor.url, `${dialect}-survived-${i}`, { prompt: `survived ${i}`, image_size: 'square', n })) : [];
      const jobCount = 5 + lived.length;

      // Every job submitted (its fal id in the ledger) and none finished at fal: the kill lands mid-flight.
      await waitFor(async () => (await database.db.selectFrom('upstream_jobs').select('id').where('fal_request_id', 'is not', null).execute()).length === jobCount, 30_000, 50);
      assert.equal(emulator.jobs().filter((j) => j.status === 'COMPLETED').length, 0, 'no job had finished at fal');
      process.kill(doomed.pid, 'SIGKILL');
      await doomed.exited;
      const killedAt = Date.now();
      // With a survivor, the retry goes to it at once: it waits out the dead process's lease, then reconciles the request itself.
      let retry = survivor && send(survivor.url, `${dialect}-retry`, idemBody, { 'idempotency-key': idemKey });
      for (const s of killed) assert.equal(await s.answer, 'connection lost');
      const livedAnswers = await Promise.all(lived.map((s) => s.answer));
      for (const a of livedAnswers) assert.equal(a === 'connection lost' ? a : a.status, 200, 'the surviving process answered its own requests');

      // fal finishes (and bills) every job while the process is down.
      await waitFor(() => emulator.jobs().length === jobCount && emulator.jobs().every((j) => j.status === 'COMPLETED'), 30_000, 50);
      const restarted = await start('restarted');
      const restartedAt = Date.now();
      retry ??= send(restarted.url, `${dialect}-retry`, idemBody, { 'idempotency-key': idemKey });

      await waitFor(async () => {
        const ledger = await readLedger(database.db);
        return ledger.requests.every((r) => !r.holding) && ledger.keys.every((k) => k.reservedMicros === 0n);
      }, 30_000, 100);
      const holdsClosedMs = Date.now() - restartedAt;
      const res = await retry.answer;
      const answeredAt = await retry.answeredAt;
      t.diagnostic(`${dialect}: holds closed ${holdsClosedMs} ms after the restart; the retry answered ${answeredAt - killedAt} ms after the kill, ${answeredAt - restartedAt} ms after the restart`);
      assert.ok(holdsClosedMs <= WITHIN_MS, `every hold closed ${holdsClosedMs} ms after the restart`);
      assert.ok(answeredAt - restartedAt <= WITHIN_MS, 'the retry answered within 10 s of the restart');
      // The dead process's lease runs out at most LEASE_EXPIRY_MS (10 s) after the kill; a retry sent at the kill waits for no more.
      if (survivor) assert.ok(answeredAt - killedAt <= 10_000 + WITHIN_MS, `the retry sent at the kill answered ${answeredAt - killedAt} ms after it`);
      assert.notEqual(res, 'connection lost');
      if (res === 'connection lost') return;
      const body = (await res.json()) as { data: Array<{ url: string }>; meta: { fal_request_ids: string[] } };
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(res.headers.get('idempotent-replayed'), 'true');
      assert.equal(body.data.length, 6);
      const idemJobs = emulator.jobs().filter((j) => j.input.prompt === idemBody.prompt);
      assert.deepEqual(new Set(body.meta.fal_request_ids), new Set(idemJobs.map((j) => j.request_id)));
      assert.equal((await fetch(body.data[5]!.url)).status, 200, 'the images are reachable');
      const again = send(restarted.url, `${dialect}-retry-again`, idemBody, { 'idempotency-key': idemKey });
      const againRes = await again.answer;
      assert.notEqual(againRes, 'connection lost');
      if (againRes !== 'connection lost') assert.deepEqual(await againRes.json(), body, 'the settled answer is stored: every process replays it');
      assert.equal(emulator.jobs().length, jobCount, 'the retries started no fal job');

      const rows = await readLedger(database.db);
      // Rows are keyed by our ids; each keeps the x-request-id this test sent as its label.
      assert.deepEqual(rows.requests.filter((r) => (r.clientRequestId ?? '').includes('retry')), [], 'a retry reserves nothing');
      const idemRow = rows.requests.find((r) => r.clientRequestId === `${dialect}-killed-idem`);
      assert.equal(idemRow?.state, 'settled');
      const answers: CallerAnswer[] = [
        ...killed.filter((s) => s.requestId !== idemRow.clientRequestId).map((s) => ({ requestId: s.requestId, status: null })),
        { requestId: idemRow.id, status: 200, costUsd: res.headers.get('x-usage-cost-usd') },
        ...lived.map((s, i) => {
          const a = livedAnswers[i]!;
          return { requestId: s.requestId, status: a === 'connection lost' ? null : a.status, costUsd: a === 'connection lost' ? null : a.headers.get('x-usage-cost-usd') };
        }),
      ];
      const audit = await auditLedger(database.db, { billing: emulator.billing(), jobIds: new Set(emulator.jobs().map((j) => j.request_id)) }, answers);
      assert.ok(audit.clean, formatAudit(audit));
      assert.equal(audit.totals.billedJobs, jobCount, 'fal billed every job');
    } catch (err) {
      for (const c of children) t.diagnostic(`--- ${c.name} log tail ---\n${tail(c.logFile, 30)}`);
      throw err;
    } finally {
      for (const c of children.reverse()) await c.stop(2000);
      await emulator.close();
      await rm(logDir, { recursive: true, force: true });
    }
  });
});
