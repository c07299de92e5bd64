// Which test files exist, and which tier each belongs to. Shared by
// run-tests.mjs and time-tests.mjs; docs/TESTING.md explains the tiers and
// gives the figures that put each file below where it is.
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export const root = new URL('..', import.meta.url).pathname;

/**
 * The integration tier (`npm run test:integration`): files that take about
 * 15 s or more on their own, or that need several processes, Chromium, a
 * long fuzz run, or run a long suite on both databases. Listed here rather than moved, so each file stays beside the
 * tests of the same src module. Every other test file is in the fast tier
 * (`npm test`). A path ending in "/" lists a whole folder.
 */
export const INTEGRATION = [
  'test/cli/cli.test.ts', // spawns the CLI and a service process
  'test/db/database.test.ts', // migrations and pools, on SQLite and PostgreSQL
  'test/db/migrations.test.ts', // migrations beside other clients' schema churn on PostgreSQL; its retries run out under heavy load
  'test/emulator/behaviours.test.ts', // real-fal behaviours that wait out queue times, media lifetimes and deadlines
  'test/emulator/storage.test.ts', // multipart uploads of large files
  'test/fuzz/fuzz.test.ts', // 3,000 seeded cases against a service in a child process, on SQLite and on PostgreSQL
  'test/http/http-server.test.ts', // slow-header and slow-body clients held for the configured seconds
  'test/http/idempotency-crash.test.ts', // SIGKILLs a service process mid-request, restarts it, on SQLite and PostgreSQL
  'test/http/rate-limit.test.ts', // two service processes sharing Redis
  'test/http/secrets-in-logs.test.ts', // services at trace level on both databases, every log line searched
  'test/images/generate-faults.test.ts', // every upstream fault, deadlines and reconciliation
  'test/images/loras-uploads.test.ts', // a 95 MB LoRA file through multipart storage, media lifetimes
  'test/main.test.ts', // starts and signals src/main.ts as a process
  'test/metering/budget-slices-replicas.test.ts', // two service processes on PostgreSQL share a budget; one is SIGKILLed
  'test/metering/crash-recovery.test.ts', // kills service processes mid-request
  'test/metering/ledger.test.ts', // the ledger's whole contract, on SQLite and PostgreSQL
  'test/metering/reconcile-job.test.ts', // waits out real give-up deadlines (JOB_GIVE_UP_MS) through the service
  'test/replicas.test.ts', // two replicas sharing PostgreSQL
  'test/scripts/probe-fal.test.ts', // the whole probe against the emulator
  'test/sdk/clients-doc.test.ts', // runs each snippet of docs/clients.md in its own Node process
  'test/soak/fault-soak.test.ts', // every emulator fault, a SIGKILL and a restart, then the billing audit, on both databases
  'test/web/pages.test.ts', // the pages in headless Chromium
];

export const TIERS = ['fast', 'integration'];

/**
 * Files the runner starts before all others, longest first (wall seconds of
 * each alone, docs/TESTING.md). The runner starts files in the order given,
 * two at a time: a long file started last would run on alone after every
 * other file is done, so the longest go first and the short ones fill in.
 */
export const LONGEST_FIRST = [
  // integration
  'test/soak/fault-soak.test.ts',
  'test/cli/cli.test.ts',
  'test/fuzz/fuzz.test.ts',
  // fast
  'test/http/waiting-requests.test.ts',
  'test/http/admin-usage.test.ts',
  'test/fal/young-garbage-fetch.test.ts',
  'test/metering/settlement.test.ts',
  'test/fal/webhooks.test.ts',
  'test/http/idempotency.test.ts',
  'test/metering/billing-webhook.test.ts',
  'test/http/stream.test.ts',
  'test/images/fan-out.test.ts',
  'test/metering/reconcile.test.ts',
];

/** `files` in the order the runner should start them: LONGEST_FIRST's order, then the rest as given. */
export function longestFirst(files) {
  const rank = (f) => {
    const i = LONGEST_FIRST.indexOf(f);
    return i === -1 ? LONGEST_FIRST.length : i;
  };
  return [...files].sort((a, b) => rank(a) - rank(b));
}

export function tierOf(file) {
  return INTEGRATION.some((p) => (p.endsWith('/') ? file.startsWith(p) : file === p)) ? 'integration' : 'fast';
}

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (/\.test\.ts$/.test(name)) out.push(p);
  }
  return out;
}

/**
 * Test files (paths relative to the repo root, sorted) containing any of the
 * substrings (all files when none are given), of one tier or of both.
 */
export function findTestFiles(filters = [], tier = undefined) {
  return walk(join(root, 'test'))
    .map((f) => relative(root, f))
    .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
    .filter((f) => tier === undefined || tierOf(f) === tier)
    .sort();
}

/**
 * Every listed path must exist, so a renamed slow file cannot slip into the
 * fast tier, or lose its early start, unnoticed.
 */
export function missingListedPaths() {
  const all = findTestFiles();
  return [...INTEGRATION, ...LONGEST_FIRST].filter((p) => !all.some((f) => (p.endsWith('/') ? f.startsWith(p) : f === p)));
}
