import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_KEY, OTHER_KEY, startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { describeFailure, pollutionProbe, runFuzz, smallestFailure, summarizeFailures } from './harness.js';

/**
 * A few thousand seeded hostile requests against a real service and a real
 * emulator; the long run is bench/fuzz.ts. A new seed every run widens the
 * search over time; FUZZ_SEED replays one, FUZZ_FIRST + FUZZ_CASES one case.
 */
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (process.pid << 16)) >>> 0;
const CASES = process.env.FUZZ_CASES ? Number(process.env.FUZZ_CASES) : 3000;
const FIRST = process.env.FUZZ_FIRST ? Number(process.env.FUZZ_FIRST) : 0;
const MAX_BODY_BYTES = 1024 * 1024;

describe('fuzz: hostile input never breaks the service', { timeout: 240_000 }, () => {
  // Taken before the service exists, so anything the run plants on a prototype shows.
  const probe = pollutionProbe();
  let t: TestService;
  before(async () => {
    // Thousands of requests a minute from one key: the per-key limit stays in
    // the path (hostile input goes through it too) but set past what the run sends.
    t = await startTestService(
      { LOG_LEVEL: 'warn', MAX_BODY_BYTES: String(MAX_BODY_BYTES), DEFAULT_RPM_LIMIT: '1000000' },
      { imageMode: 'cheap', latencyMs: 5 },
    );
  });
  after(async () => {
    await t?.close();
  });

  it(`${CASES} cases (seed ${SEED})`, async (ctx) => {
    ctx.diagnostic(`FUZZ_SEED=${SEED} FUZZ_FIRST=${FIRST} FUZZ_CASES=${CASES}`);
    console.log(`fuzz: seed ${SEED}, cases ${FIRST}..${FIRST + CASES - 1}`);
    const report = await runFuzz({
      url: t.url,
      seed: SEED,
      first: FIRST,
      cases: CASES,
      concurrency: 8,
      gen: { userKey: TEST_KEY, adminKey: ADMIN_KEY, otherKey: OTHER_KEY, maxBodyBytes: MAX_BODY_BYTES },
    });
    const histogram = [...report.statuses].sort().map(([s, n]) => `${s}:${n}`).join(' ');
    console.log(`fuzz: ${CASES} cases in ${(report.elapsedMs / 1000).toFixed(1)} s (${Math.round(CASES / (report.elapsedMs / 1000))}/s), slowest ${Math.round(report.maxMs)} ms; statuses ${histogram}`);

    const problems: string[] = [];
    if (report.failureCount > 0) {
      const smallest = await smallestFailure(t.url, report.failures);
      problems.push(
        `${report.failureCount} of ${CASES} cases broke the invariant (seed ${SEED}):\n${summarizeFailures(report.failures)}`,
        `smallest failing case:\n${describeFailure(SEED, smallest!)}`,
      );
    }
    problems.push(...probe.check().map((p) => `prototype pollution: ${p}`));

    // Still alive, and no request died on an unexpected exception along the way.
    const health = await fetch(`${t.url}/healthz`);
    if (health.status !== 200) problems.push(`/healthz answered ${health.status} after the run`);
    const crashes = t.logs.filter((l) => Number(l['level']) >= 50);
    if (crashes.length > 0) problems.push(`${crashes.length} error-level log lines, first: ${JSON.stringify(crashes[0]).slice(0, 600)}`);

    assert.equal(problems.length, 0, problems.join('\n\n'));
  });
});
