import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { describeEachDialect, serviceEnv } from '../helpers/databases.js';
import { describeFailure, runFuzz, smallestFailure, startFuzzTarget, summarizeFailures, type FuzzTarget } from './harness.js';

/**
 * A few thousand seeded hostile requests against a real service and a real
 * emulator (in a child process, so a crash shows as an exit); the long run is
 * bench/fuzz.ts. A new seed every run widens the search over time: the seed
 * is printed, FUZZ_SEED replays a run, FUZZ_FIRST with FUZZ_CASES=1 one case.
 * The same cases run on SQLite and on PostgreSQL: what the databases can
 * store differs, the answers must not.
 */
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (process.pid << 16)) >>> 0;
const CASES = process.env.FUZZ_CASES ? Number(process.env.FUZZ_CASES) : 3000;
const FIRST = process.env.FUZZ_FIRST ? Number(process.env.FUZZ_FIRST) : 0;

describeEachDialect('fuzz: hostile input never breaks the service', (ctx) => {
  let target: FuzzTarget;
  before(async () => {
    target = await startFuzzTarget({ databaseUrl: (await serviceEnv(await ctx.storage())).DATABASE_URL });
  });
  after(async () => {
    await target?.stop();
  });

  it(`${CASES} seeded cases`, { timeout: 300_000 }, async (t) => {
    t.diagnostic(`FUZZ_SEED=${SEED} FUZZ_FIRST=${FIRST} FUZZ_CASES=${CASES}`);
    console.log(`fuzz (${ctx.dialect}): seed ${SEED}, cases ${FIRST}..${FIRST + CASES - 1}`);
    const report = await runFuzz({ url: target.url, seed: SEED, first: FIRST, cases: CASES, concurrency: 8, gen: target.gen });
    const histogram = [...report.statuses].sort().map(([s, n]) => `${s}:${n}`).join(' ');
    console.log(
      `fuzz (${ctx.dialect}): ${CASES} cases in ${(report.elapsedMs / 1000).toFixed(1)} s (${Math.round(CASES / (report.elapsedMs / 1000))}/s), ` +
        `slowest ${Math.round(report.maxMs)} ms; statuses ${histogram}`,
    );

    const problems: string[] = [];
    if (target.exit) {
      problems.push(`the service process exited during the run: ${JSON.stringify(target.exit)}`);
    } else {
      if (report.failureCount > 0) {
        const smallest = await smallestFailure(target.url, report.failures);
        problems.push(
          `${report.failureCount} of ${CASES} cases broke the invariant (seed ${SEED}, ${ctx.dialect}):\n${summarizeFailures(report.failures)}`,
          `smallest failing case:\n${describeFailure(SEED, smallest!)}`,
        );
      }
      const seen = await target.check();
      problems.push(...seen.pollution.map((p) => `prototype pollution in the service: ${p}`));
      if (seen.errorLines > 0) problems.push(`${seen.errorLines} error-level log lines (an unexpected exception), first: ${seen.firstError}`);
      const health = await fetch(`${target.url}/healthz`);
      if (health.status !== 200) problems.push(`/healthz answered ${health.status} after the run`);
    }
    assert.equal(problems.length, 0, problems.join('\n\n'));
  });
});
