/**
 * `npm run probe:fal` (scripts/probe-fal.ts, scripts/probe/*) against an
 * in-process emulator: on the emulator's defaults every behaviour the probe
 * can observe MATCHes and the run costs what the emulator billed; with the
 * kinder opt-outs and a few faults the probe reports DIFFERS and exit 1;
 * a fal that never answers fails the probe instead of hanging it.
 *
 * The emulator's timing is taken out of the picture with faults that only
 * stretch it: the job to cancel while queued stays queued, the job to cancel
 * while running runs until the probe has cancelled it, so no verdict depends
 * on how fast this machine is.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { startEmulator, type Emulator, type EmulatorOptions } from '../../src/emulator/index.js';
import { ONLY_OBSERVED_BY_CHANCE, PROBE_BEHAVIOURS } from '../../scripts/probe/behaviours.js';
import { ProbeAbort } from '../../scripts/probe/conversation.js';
import { formatJson, formatText, type ProbeReport } from '../../scripts/probe/report.js';
import { DUMMY_KEY, probe, PROBE_EMULATOR_OPTIONS, targetFromEnv } from '../../scripts/probe/run.js';

const KEY = 'probe-test-key-never-printed';

/** An emulator on the probe's own options, its timing stretched as described above. */
async function stretchedEmulator(t: { after(fn: () => Promise<void> | void): void }, extra: EmulatorOptions = {}): Promise<Emulator> {
  const emu = await startEmulator({ ...PROBE_EMULATOR_OPTIONS, ...extra });
  emu.armFault([
    { kind: 'latency', latency_ms: 600_000, queue_ms: 600_000, prompt_contains: ': cancel_queued,' },
    { kind: 'never_finish', prompt_contains: ': cancel_running,' },
  ]);
  // Finish the held job once the probe's cancel has reached it (fal lets a running job run on).
  const timer = setInterval(() => {
    for (const j of emu.jobs()) if (j.status === 'IN_PROGRESS' && j.never_finish && j.cancel_requested_at !== undefined) emu.finishJob(j.request_id);
  }, 20);
  t.after(async () => {
    clearInterval(timer);
    await emu.close();
  });
  return emu;
}

function verdicts(r: ProbeReport): Record<string, string> {
  return Object.fromEntries(r.lines.map((l) => [l.id, l.verdict]));
}

describe('probe:fal against the emulator', () => {
  test('on the defaults every observable behaviour MATCHes, and the cost is what the emulator billed', async (t) => {
    const emu = await stretchedEmulator(t);
    const report = await probe({ kind: 'base-url', url: emu.url, credentials: KEY });

    assert.deepEqual(
      report.lines.map((l) => l.id),
      PROBE_BEHAVIOURS.map((b) => b.id),
    );
    for (const line of report.lines) {
      const expected = ONLY_OBSERVED_BY_CHANCE.includes(line.id) ? 'NOT OBSERVED' : 'MATCH';
      assert.equal(line.verdict, expected, `${line.id}: ${line.fal}`);
      assert.match(line.docs, /^https:\/\/(docs\.)?fal\.ai\//);
    }
    assert.deepEqual(report.problems, []);
    assert.equal(report.exit_code, 0);

    const usd = Number(report.cost.total_usd);
    assert.ok(usd > 0 && usd < 0.05, `cost $${report.cost.total_usd}`);
    assert.equal(report.cost.total_usd, emu.billingTotal(), 'priced from the headers, the total is what the emulator billed');
    assert.deepEqual(
      report.cost.jobs.filter((j) => j.units !== '0').map((j) => j.request_id).sort(),
      emu.billing().map((b) => b.request_id).sort(),
    );

    const text = formatText(report);
    for (const line of report.lines) {
      const printed = text.split('\n').filter((l) => new RegExp(`^(MATCH|DIFFERS|NOT OBSERVED) +${line.id} +fal: `).test(l));
      assert.equal(printed.length, 1, `one line for ${line.id}`);
      assert.ok(printed[0]!.startsWith(line.verdict), printed[0]);
      assert.ok(printed[0]!.includes(line.docs), printed[0]);
    }
    assert.match(text, /cost: 3 megapixel\(s\) x \$0\.005 = \$0\.015/);
    const json = formatJson(report);
    assert.deepEqual(JSON.parse(json).lines, report.lines);
    assert.equal(json.includes(KEY) || text.includes(KEY), false, 'the key never reaches the report');
  });

  test('a less unkind emulator (kinder opt-outs, faults) DIFFERS where it should, and the exit code says so', async (t) => {
    const emu = await stretchedEmulator(t, { kinder: ['submit_validation', 'cancel_stops_running'] });
    emu.armFault([
      { kind: 'omit_dimensions', prompt_contains: ': image,' },
      { kind: 'runner_retry', prompt_contains: ': image,' },
    ]);
    const report = await probe({ kind: 'base-url', url: emu.url, credentials: KEY });
    const v = verdicts(report);
    assert.deepEqual(
      Object.keys(v).filter((id) => v[id] === 'DIFFERS').sort(),
      ['cancel_running', 'model_error_hints', 'output_dimensions', 'result_request_id', 'validation_after_queueing'],
    );
    assert.equal(v.billed_failure, 'NOT OBSERVED', 'refused at submit: no job to bill');
    assert.equal(report.exit_code, 1);
    assert.match(formatText(report), /exit 1\n$/);
  });

  test('the in-process target starts and closes its own emulator', async () => {
    const report = await probe({ kind: 'emulator' }, { endpoint: 'fal-ai/z-image/turbo' });
    assert.equal(report.target.kind, 'emulator');
    assert.match(report.target.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    // The server is gone once the probe returns.
    await assert.rejects(fetch(`${report.target.url}/_emulator/health`));
    // Timing decides the two cancel lines here (no faults to stretch it); everything else is fixed.
    for (const line of report.lines) {
      if (line.id === 'cancel_queued' || line.id === 'cancel_running' || ONLY_OBSERVED_BY_CHANCE.includes(line.id)) continue;
      assert.equal(line.verdict, 'MATCH', `${line.id}: ${line.fal}`);
    }
  });
});

describe('probe:fal targets and failures', () => {
  test('the target follows FAL_BASE_URL and FAL_KEY', () => {
    assert.deepEqual(targetFromEnv({}), { kind: 'emulator' });
    assert.deepEqual(targetFromEnv({ FAL_KEY: 'k' }), { kind: 'fal', credentials: 'k' });
    assert.deepEqual(targetFromEnv({ FAL_BASE_URL: 'http://h:1' }), { kind: 'base-url', url: 'http://h:1', credentials: DUMMY_KEY });
    assert.deepEqual(targetFromEnv({ FAL_BASE_URL: 'http://h:1', FAL_KEY: 'k' }), { kind: 'base-url', url: 'http://h:1', credentials: 'k' });
    assert.deepEqual(targetFromEnv({ FAL_KEY: ' ', FAL_BASE_URL: '' }), { kind: 'emulator' });
  });

  test('a fal that accepts connections and never answers fails the probe with the call that hung', async (t) => {
    const sockets = new Set<Socket>();
    const server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.after(
      () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          server.close(() => r());
        }),
    );
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    await assert.rejects(probe({ kind: 'base-url', url, credentials: KEY }, { callTimeoutMs: 300 }), (err: unknown) => {
      assert.ok(err instanceof ProbeAbort, String(err));
      assert.match(err.message, /^submit \(image\): POST https:\/\/queue\.fal\.run\/fal-ai\/z-image\/turbo: no answer within 300 ms/);
      return true;
    });
  });

  test('nothing listening: the probe fails after the client\'s own retries, naming the call', async () => {
    // A port just freed refuses at once; the client retries a refused connection three times (about 7 s of backoff).
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((r) => server.close(() => r()));
    await assert.rejects(probe({ kind: 'base-url', url: `http://127.0.0.1:${port}`, credentials: KEY }), (err: unknown) => {
      assert.ok(err instanceof ProbeAbort, String(err));
      assert.match(err.message, /submit \(image\): POST https:\/\/queue\.fal\.run\/fal-ai\/z-image\/turbo: .*ECONNREFUSED.*\(4 attempts\)/);
      return true;
    });
  });
});
