/**
 * The service under fuzz, in a process of its own: a crash shows as an exit
 * instead of taking the fuzzer down with it, the fuzzer's own allocations do
 * not blur the memory figures, and client and service get a core each.
 * Started by `startFuzzTarget()` (harness.ts); speaks to it over IPC.
 *
 * Messages out: ready {url, userKey, adminKey, otherKey}, memory samples every
 * second, and the answer to `check`: prototype pollution seen in this process
 * and error-level log lines (an unexpected exception in a request).
 */
import { ADMIN_KEY, OTHER_KEY, startTestService, TEST_KEY } from '../helpers/service.js';
import { pollutionProbe } from './harness.js';

const send = (msg: unknown) => process.send?.(msg);
const maxBodyBytes = process.env.FUZZ_MAX_BODY_BYTES ?? String(1024 * 1024);

// PostgreSQL when the harness passes one (FUZZ_DATABASE_URL); SQLite under a temporary DATA_DIR otherwise.
const database: Record<string, string> = process.env.FUZZ_DATABASE_URL ? { DATABASE_URL: process.env.FUZZ_DATABASE_URL, FILE_URL_SECRET: 'fuzz-target-file-url-secret-0123456789' } : {};

const t = await startTestService(
  // Rate limits are the load suite's subject; here they would only turn valid requests into 429s.
  { LOG_LEVEL: 'warn', MAX_BODY_BYTES: maxBodyBytes, DEFAULT_RPM_LIMIT: '0', ...database },
  { imageMode: 'cheap', latencyMs: 5 },
);
// Taken once the service is up and before any fuzz request, so only the run can dirty it.
const probe = pollutionProbe();

let errorLines = 0;
let firstError: string | undefined;
const drainLogs = () => {
  for (const line of t.logs) {
    if (Number(line['level']) >= 50) {
      errorLines++;
      firstError ??= JSON.stringify(line).slice(0, 1500);
    }
  }
  // The helper keeps every line; a 100,000-case run must not grow on that account.
  t.logs.length = 0;
};

const started = Date.now();
const sample = () => {
  drainLogs();
  const m = process.memoryUsage();
  send({ type: 'memory', t: Date.now() - started, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external });
};
const timer = setInterval(sample, 1000);

process.on('message', (msg: { type?: string }) => {
  if (msg?.type === 'check') {
    drainLogs();
    send({ type: 'checked', pollution: probe.check(), errorLines, firstError });
  } else if (msg?.type === 'gc') {
    // Sent between batches, with nothing in flight. The emulator keeps every
    // job and its billing log by design; cleared here so memory figures are the service's.
    t.emulator.reset();
    // Only with --expose-gc: lets the figure show what is retained rather than what is merely uncollected.
    (globalThis as { gc?: () => void }).gc?.();
    sample();
    send({ type: 'gc_done' });
  } else if (msg?.type === 'stop') {
    clearInterval(timer);
    void t.close().then(() => process.exit(0));
  }
});
process.on('disconnect', () => {
  clearInterval(timer);
  void t.close().finally(() => process.exit(0));
});

sample();
send({ type: 'ready', url: t.url, userKey: TEST_KEY, adminKey: ADMIN_KEY, otherKey: OTHER_KEY, maxBodyBytes: Number(maxBodyBytes) });
