/**
 * The fault soak at length (issue 16): the driver of test/soak/ with more
 * requests and callers, on SQLite and PostgreSQL, and what the billing audit
 * found written to bench/README.md: how many requests got which answer, what
 * fal billed against what the ledger recorded, and the drift by kind and by
 * the scenario that caused it.
 *
 *   npx tsx bench/fault-soak.ts [--requests 600] [--concurrency 16] [--seed N] [--dialects sqlite,postgres] [--no-write]
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { describeMachine } from './lib/machine.js';
import { table } from './lib/markdown.js';
import { machineLine, writeSection } from './lib/readme-section.js';
import { formatUsd } from '../src/metering/money.js';
import { formatAudit } from '../test/helpers/billing-audit.js';
import { postgresAvailability } from '../test/helpers/databases.js';
import { runFaultSoak, type SoakResult } from '../test/soak/driver.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '600' },
    concurrency: { type: 'string', default: '16' },
    seed: { type: 'string', default: '1616' },
    dialects: { type: 'string', default: 'sqlite,postgres' },
    'no-write': { type: 'boolean', default: false },
  },
});
const REQUESTS = Number(values.requests);
const CONCURRENCY = Number(values.concurrency);
const SEED = Number(values.seed) >>> 0;
const DIALECTS = values.dialects.split(',').map((d) => d.trim()) as Array<'sqlite' | 'postgres'>;
if (!Number.isInteger(REQUESTS) || REQUESTS < 50 || !Number.isInteger(CONCURRENCY) || CONCURRENCY < 1 || DIALECTS.some((d) => d !== 'sqlite' && d !== 'postgres')) {
  console.error('usage: npx tsx bench/fault-soak.ts [--requests N>=50] [--concurrency N] [--seed N] [--dialects sqlite,postgres] [--no-write]');
  process.exit(2);
}
/** One key that never runs out, two that run out part-way (scaled with the run, as in the test's 120 requests). */
const BUDGETS = ['1000', (REQUESTS * 0.008).toFixed(2), (REQUESTS * 0.002).toFixed(3)];

const INTRO = `
\`\`\`sh
npx tsx bench/fault-soak.ts                       # 600 requests at concurrency 16, SQLite then PostgreSQL
npx tsx bench/fault-soak.ts --requests 200 --dialects sqlite
\`\`\`

Issue 16's acceptance at length: the driver of \`test/soak/fault-soak.test.ts\` (a standalone emulator process on
its real-fal defaults, the service as a child process, three keys with budgets, a seeded mix of every emulator
fault kind, callers who leave early, one SIGKILL of the service mid-load and a restart on the same database),
then the billing audit of \`test/helpers/billing-audit.ts\` once every fal job is final and the service has
reconciled what it can. Every drift found is listed by kind and by the scenario that caused it.
`;

function usd(m: bigint): string {
  return `$${formatUsd(m)}`;
}

function section(results: Array<{ dialect: string; soak: SoakResult }>, skipped: string[], elapsedS: number, loadAtStart: ReturnType<typeof describeMachine>): string {
  const lines = [
    `Run: \`npx tsx bench/fault-soak.ts --requests ${REQUESTS} --concurrency ${CONCURRENCY} --seed ${SEED}\` on ${loadAtStart.date.slice(0, 10)} (${Math.round(elapsedS)} s).`,
    '',
    machineLine(loadAtStart, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: emulator in cheap image mode, 600 ms per ordinary job, account concurrency 10 (fal's default), no kinder behaviours; ` +
      `service with \`REQUEST_TIMEOUT_MS=6000\`, \`RECONCILE_AFTER_MS=11000\`, \`RECONCILE_INTERVAL_MS=1000\`; key budgets ${BUDGETS.map((b) => `$${b}`).join(', ')}; ` +
      `the service SIGKILLed when 45 % of the requests had been sent.`,
    '',
    table(
      ['database', 'answers', 'fal jobs', 'fal billed', 'ledger upstream cost', 'missing', 'callers charged', 'holds closed', 'load s', 'settle s'],
      results.map(({ dialect, soak }) => {
        const t = soak.audit.totals;
        return [
          dialect,
          [...soak.statuses].map(([k, n]) => `${k}: ${n}`).join(', '),
          `${soak.emulatorJobs} (${t.billedJobs} billed)`,
          usd(t.falBilledMicros),
          usd(t.ledgerUpstreamMicros),
          usd(t.falBilledMicros - t.ledgerUpstreamMicros),
          usd(t.callerChargedMicros),
          soak.settled.holdsClosed ? 'yes' : 'no',
          (soak.timings.loadMs / 1000).toFixed(1),
          (soak.timings.settleMs / 1000).toFixed(1),
        ];
      }),
    ),
    '',
    '**Drift by kind and scenario** (scenario names: `family:detail`, see test/soak/scenarios.ts)',
    '',
    table(
      ['database', 'drift', 'count', 'scenarios'],
      results.flatMap(({ dialect, soak }) =>
        [...soak.driftByScenario].map(([kind, by]) => [
          dialect,
          kind,
          String([...by.values()].reduce((a, b) => a + b, 0)),
          [...by].sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', '),
        ]),
      ),
    ),
  ];
  if (results.every((r) => r.soak.audit.clean)) lines.push('', 'The audit was clean on every database.');
  if (skipped.length > 0) lines.push('', `Skipped: ${skipped.join('; ')}.`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  const machine = describeMachine();
  const t0 = Date.now();
  const results: Array<{ dialect: string; soak: SoakResult }> = [];
  const skipped: string[] = [];
  for (const dialect of DIALECTS) {
    if (dialect === 'postgres') {
      const pg = await postgresAvailability();
      if (!pg.ok) {
        skipped.push(`postgres (${pg.reason})`);
        continue;
      }
    }
    const soak = await runFaultSoak({
      dialect,
      seed: SEED,
      requests: REQUESTS,
      concurrency: CONCURRENCY,
      budgets: BUDGETS,
      killAt: 0.45,
      settleDeadlineMs: 180_000,
      log: (l) => console.log(l),
    });
    console.log(formatAudit(soak.audit, soak.label, 20));
    results.push({ dialect, soak });
  }
  const text = section(results, skipped, (Date.now() - t0) / 1000, machine);
  console.log(`\n${text}`);
  if (!values['no-write']) await writeSection('fault-soak', 'Fault soak: the ledger against fal’s bill under faults (issue 16)', INTRO, text);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
