/**
 * Issue 6, "More than one process": throughput of 1 vs 2 service processes
 * sharing PostgreSQL (ledger, keys, idempotency) and Redis (rate limits), in
 * front of one standalone emulator, with this process round-robining
 * requests between them.
 *
 *   npx tsx bench/replicas.ts [--quick] [--plan=16x1,64x1,64x16] [--rounds=N] [--duration=S]
 *       [--funding=unbudgeted,budgeted | --budgeted]
 *       [--pg=postgres://postgres@127.0.0.1:5432/test] [--redis=redis://127.0.0.1:6379] [--no-write]
 *
 * A plan cell is concurrency × API keys: the client rotates through that
 * many keys, because every reservation and settlement updates its key's row
 * (budget) in PostgreSQL, and with a single key those updates queue on one
 * row lock whatever the number of processes.
 *
 * Keys are *unbudgeted* (static keys from API_KEYS, no budget: a request
 * writes no shared row) or *budgeted* (keys issued through the admin API
 * with a budget no run can reach, so every request takes the budget-slice
 * path of src/metering/budget-slices.ts and none is refused). The full run
 * measures both, in the same alternating rounds; --quick only the first
 * unless --funding or --budgeted says otherwise.
 *
 * Both processes run for the whole bench; in "1" rounds only the first gets
 * requests. Each round runs every plan cell, each on 1 then 2 processes, so
 * the drift of a shared machine (and the ledger's growing tables) lands on
 * every cell alike, and figures are medians over rounds
 * (bench/lib/rounds.ts). At the end the ledger's rows are counted against
 * the answers the client got and the jobs the emulator saw: nothing lost
 * or doubled between processes.
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import pg from 'pg';
import { keepAliveAgent, post } from './lib/http-client.js';
import type { Call } from './lib/load.js';
import { describeMachine } from './lib/machine.js';
import { fixed, ms, rate, table } from './lib/markdown.js';
import type { BenchPath, BenchUpstream } from './lib/paths.js';
import { cpuDeltas, readAllCpu, readCpuMs, readMachineCpu } from './lib/procfs.js';
import { BENCH_FAL_CONCURRENCY, startEmulatorProcess, startServiceProcess, type NodeChild } from './lib/procs.js';
import { machineLine, writeSection } from './lib/readme-section.js';
import { median } from './lib/stats.js';
import { pathFigures, runPathRound, type RoundResult } from './lib/rounds.js';
import { BENCH_KEY, clearRedisPrefix, emulatorAdmin, imageBody, issueKeys, log, pgSchema, serviceEnv, tempDir, timeBudget } from './lib/scale.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    plan: { type: 'string', default: '16x1,64x1,64x16' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    latency: { type: 'string', default: '20' },
    pg: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
    'no-write': { type: 'boolean', default: false },
    funding: { type: 'string' },
    budgeted: { type: 'boolean', default: false },
  },
  strict: true,
});

const plan = args.plan.split(',').map((cell) => {
  const [c, k] = cell.split('x').map(Number);
  if (!Number.isInteger(c) || !Number.isInteger(k) || c! < 1 || k! < 1) throw new Error(`--plan cells are <concurrency>x<keys>, got ${cell}`);
  return { c: c!, keys: k! };
});
type Funding = 'unbudgeted' | 'budgeted';
const fundings = (args.funding ?? (args.budgeted ? 'budgeted' : args.quick ? 'unbudgeted' : 'unbudgeted,budgeted')).split(',') as Funding[];
for (const f of fundings) if (f !== 'unbudgeted' && f !== 'budgeted') throw new Error(`--funding takes unbudgeted and/or budgeted, got ${f}`);
/** Issues the budgeted keys (the admin API needs an admin key). */
const ADMIN_KEY = 'sk-bench-replicas-admin-0123456789abcdef';
/** A budget no run reaches (a request holds at most a few cents): budgeted keys are never refused. */
const NEVER_REACHED_USD = '1000000.000000';
const rounds = Number(args.rounds ?? (args.quick ? 2 : 5));
const durationMs = Number(args.duration ?? (args.quick ? 5 : 15)) * 1000;
const warmupMs = 1500;
const latencyMs = Number(args.latency);
const KEYS = Array.from({ length: Math.max(...plan.map((p) => p.keys)) }, (_, i) => (i === 0 ? BENCH_KEY : `${BENCH_KEY}-${i}`));
timeBudget(plan.length * fundings.length * rounds * 2 * (durationMs + warmupMs + 30_000) + 5 * 60_000, 'bench/replicas.ts');

/** The emulator's counters are not needed per round: completion timestamps are issue 3's subject (bench/overhead.ts). */
const noUpstream: BenchUpstream = { label: 'emulator (standalone)', reset() {}, completedAtMs: () => undefined, counters: () => ({ jobs: 0, calls: {} }) };

interface Tally {
  ok: number;
  failed: number;
}

function roundRobin(id: string, targets: NodeChild[], keys: readonly string[], tally: Tally): BenchPath {
  let agent = keepAliveAgent();
  const urls = targets.map((t) => `${t.url}/v1/images/generations`);
  const body = imageBody();
  let next = 0;
  let key = 0;
  const call: Call = async (signal) => {
    const url = urls[next++ % urls.length]!;
    const r = await post(url, body, { agent, headers: { authorization: `Bearer ${keys[key++ % keys.length]}` }, timeoutMs: 60_000 });
    if (signal.aborted) throw new Error('timed out');
    if (r.status !== 200) {
      tally.failed++;
      throw new Error(`HTTP ${r.status}: ${r.body.toString().slice(0, 200)}`);
    }
    tally.ok++;
    return { doneAtMs: r.doneAtWallMs };
  };
  return {
    id,
    label: `${targets.length} process${targets.length > 1 ? 'es' : ''}`,
    // Called before and after each round: fresh connections per round, because
    // node:http's agent would reuse sockets the other process closed while it
    // sat out the previous round (5 s keep-alive timeout), and count the race as errors.
    upstream: {
      ...noUpstream,
      reset() {
        agent.destroy();
        agent = keepAliveAgent();
      },
    },
    call,
    async close() {
      agent.destroy();
    },
  };
}

/** A plan cell's path id: processes, keys, funding. */
const pathId = (n: 1 | 2, keys: number, f: Funding) => `${n}/${keys}/${f}`;

interface RoundCpu {
  path: string;
  concurrency: number;
  round: number;
  /** Where the machine's CPU went during the round, in cores (CPU ms per wall ms). */
  cores: Record<'service a' | 'service b' | 'emulator' | 'PostgreSQL' | 'Redis' | 'bench client' | 'other processes' | 'not attributed' | 'idle', number>;
  /** CPU of each service process over the round, as a share of one core. */
  util: number[];
  cpuMsPerRequest: number;
}

async function main(): Promise<void> {
  const machine = describeMachine();
  const startedAt = new Date();
  const dir = await tempDir('gw-replicas-');
  const schema = await pgSchema(args.pg, 'bench_replicas');
  const prefix = `bench-replicas-${process.pid}-${Date.now().toString(36)}`;
  const children: NodeChild[] = [];
  const tally: Tally = { ok: 0, failed: 0 };
  const results: RoundResult[] = [];
  const cpu: RoundCpu[] = [];
  const roundErrors: string[] = [];
  /** CPU ms of processes that are not part of the bench, by command name, over all rounds. */
  const otherComms = new Map<string, number>();
  let check: { ledgerRows: number; emulatorJobs: number } | undefined;
  try {
    const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: String(latencyMs), EMULATOR_IMAGE_MODE: 'cheap', EMULATOR_CONCURRENCY: BENCH_FAL_CONCURRENCY });
    children.push(emu);
    const env = serviceEnv(emu.url, `${dir.path}/unused-data`, {
      DATABASE_URL: schema.url,
      API_KEYS: KEYS.join(','),
      ...(fundings.includes('budgeted') ? { ADMIN_API_KEY: ADMIN_KEY } : {}),
      REDIS_URL: args.redis,
      REDIS_KEY_PREFIX: prefix,
      // A limit that is never reached: every request still takes its token from Redis.
      DEFAULT_RPM_LIMIT: '1000000',
    });
    // One after the other: the first applies the migrations, the second finds them done.
    const a = await startServiceProcess(dir.path, env, 'service-a');
    children.push(a);
    const b = await startServiceProcess(dir.path, env, 'service-b');
    children.push(b);
    log(`emulator ${emu.url}; services ${a.url} (pid ${a.pid}), ${b.url} (pid ${b.pid}); schema ${schema.schema}; redis prefix ${prefix}`);
    const keySets: Record<Funding, string[]> = { unbudgeted: KEYS, budgeted: fundings.includes('budgeted') ? await issueKeys(a.url, ADMIN_KEY, KEYS.length, NEVER_REACHED_USD) : [] };
    const cells = plan.map(({ c, keys }) => ({
      c,
      keys,
      paths: fundings.flatMap((f) => {
        const use = keySets[f].slice(0, keys);
        return [roundRobin(pathId(1, keys, f), [a], use, tally), roundRobin(pathId(2, keys, f), [a, b], use, tally)];
      }),
    }));
    const allPaths: BenchPath[] = cells.flatMap((cell) => cell.paths);
    // Every cell in every round, so the cells compared (one key against
    // sixteen) see the same drift of the machine and the same table sizes.
    for (let r = 0; r < rounds; r++) {
      for (const { c, keys, paths } of cells) {
        for (const p of paths) {
          const c0 = [readCpuMs(a.pid), readCpuMs(b.pid)];
          const procs0 = readAllCpu();
          const other0 = { self: process.cpuUsage(), machine: readMachineCpu() };
          const t0 = performance.now();
          const res = await runPathRound(p, c, r, { warmupMs, durationMs, maxRequests: 200_000, requestTimeoutMs: 60_000 });
          const wall = performance.now() - t0;
          const used = [readCpuMs(a.pid) - c0[0]!, readCpuMs(b.pid) - c0[1]!];
          const self = process.cpuUsage(other0.self);
          const machineNow = readMachineCpu();
          const deltas = cpuDeltas(procs0, readAllCpu());
          const ours = new Set([a.pid, b.pid, emu.pid, process.pid]);
          const byComm = (comm: string) => deltas.filter((d) => d.comm === comm && !ours.has(d.pid)).reduce((x, d) => x + d.ms, 0);
          const others = deltas.filter((d) => !ours.has(d.pid) && d.comm !== 'postgres' && d.comm !== 'redis-server');
          const busy = machineNow.busyMs - other0.machine.busyMs;
          const allProcs = deltas.reduce((x, d) => x + d.ms, 0);
          const cores = {
            'service a': used[0]! / wall,
            'service b': used[1]! / wall,
            emulator: (deltas.find((d) => d.pid === emu.pid)?.ms ?? 0) / wall,
            PostgreSQL: byComm('postgres') / wall,
            Redis: byComm('redis-server') / wall,
            'bench client': (self.user + self.system) / 1000 / wall,
            'other processes': others.reduce((x, d) => x + d.ms, 0) / wall,
            'not attributed': Math.max(0, busy - allProcs) / wall,
            idle: (machineNow.totalMs - other0.machine.totalMs - busy) / wall,
          };
          const top = new Map<string, number>();
          for (const d of others) top.set(d.comm, (top.get(d.comm) ?? 0) + d.ms);
          for (const [comm, v] of top) otherComms.set(comm, (otherComms.get(comm) ?? 0) + v);
          results.push(res);
          if (res.firstError) roundErrors.push(`c=${c}, ${keys} ${p.id.split('/')[2]} key(s), ${p.label}, round ${r + 1}: ${res.errors} × first: ${res.firstError}`);
          // Whole round (warm-up included) against requests of the whole round: both sides cover the same span.
          const n = res.throughput * (durationMs / 1000);
          cpu.push({ path: p.id, concurrency: c, round: r, cores, util: used.map((u) => u / wall), cpuMsPerRequest: (used[0]! + used[1]!) / (wall / durationMs) / Math.max(1, n) });
          log(`c=${c} keys=${keys} ${p.id.split('/')[2]} round ${r + 1} ${p.label}: ${rate(res.throughput)} req/s, p50 ${ms(res.latency.p50)} ms, p99 ${ms(res.latency.p99)} ms, errors ${res.errors}, CPU ${used.map((u) => `${Math.round((u / wall) * 100)}%`).join(' + ')}, PostgreSQL ${fixed(cores.PostgreSQL, 2)} cores = ${fixed((cores.PostgreSQL * 1000) / Math.max(1e-9, res.throughput), 2)} ms/req`);
        }
      }
    }
    for (const p of allPaths) await p.close();

    const db = new pg.Client({ connectionString: schema.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ n: string }>('select count(*) as n from requests');
      check = { ledgerRows: Number(rows[0]!.n), emulatorJobs: (await emulatorAdmin(emu.url).health()).jobs_created };
    } finally {
      await db.end();
    }
  } finally {
    for (const c of children.reverse()) await c.stop(15_000);
    await schema.drop();
    await clearRedisPrefix(args.redis, prefix);
    if (process.env.BENCH_KEEP) log(`logs kept in ${dir.path}`);
    else await dir.remove();
  }

  const cells = plan.flatMap((cell) => fundings.map((f) => ({ ...cell, f })));
  const rows = cells.flatMap(({ c, keys, f }) => {
    const [p1, p2] = [pathId(1, keys, f), pathId(2, keys, f)];
    const one = pathFigures(results, p1, c);
    const two = pathFigures(results, p2, c);
    const gain = median(
      Array.from({ length: rounds }, (_, r) => {
        const x = results.find((q) => q.path === p1 && q.concurrency === c && q.round === r);
        const y = results.find((q) => q.path === p2 && q.concurrency === c && q.round === r);
        return x && y ? y.throughput / x.throughput : Number.NaN;
      }),
    );
    const util = (path: string) => {
      const rs = cpu.filter((q) => q.path === path && q.concurrency === c);
      return [0, 1].map((i) => `${Math.round(median(rs.map((q) => q.util[i]!)) * 100)}%`).join(' + ');
    };
    const cpuPer = (path: string) => fixed(median(cpu.filter((q) => q.path === path && q.concurrency === c).map((q) => q.cpuMsPerRequest)), 1);
    // Issue 22's measure: every postgres process's CPU over the round ÷ the round's requests.
    const pgPer = (path: string) =>
      fixed(median(cpu.filter((q) => q.path === path && q.concurrency === c).map((q) => (q.cores.PostgreSQL * 1000) / Math.max(1e-9, results.find((x) => x.path === path && x.concurrency === c && x.round === q.round)?.throughput ?? Number.NaN))), 2);
    return [
      [String(c), String(keys), f, '1', rate(one.throughput), ms(one.p50), ms(one.p99), String(one.errors), util(p1), cpuPer(p1), pgPer(p1), ''],
      [String(c), String(keys), f, '2', rate(two.throughput), ms(two.p50), ms(two.p99), String(two.errors), util(p2), cpuPer(p2), pgPer(p2), `**${fixed(gain)}×**`],
    ];
  });
  const budgetKeys = ['service a', 'service b', 'emulator', 'PostgreSQL', 'Redis', 'bench client', 'other processes', 'not attributed', 'idle'] as const;
  const otherTotal = [...otherComms.values()].reduce((x, v) => x + v, 0);
  const topOthers = [...otherComms]
    .sort((x, y) => y[1] - x[1])
    .slice(0, 5)
    .map(([comm, v]) => `${comm} ${Math.round((v / Math.max(1, otherTotal)) * 100)}%`)
    .join(', ');
  const budgetRows = cells.flatMap(({ c, keys, f }) =>
    ([1, 2] as const).map((n) => {
      const rs = cpu.filter((q) => q.path === pathId(n, keys, f) && q.concurrency === c);
      return [String(c), String(keys), f, String(n), ...budgetKeys.map((k) => fixed(median(rs.map((q) => q.cores[k])), 2))];
    }),
  );
  const seconds = (Date.now() - startedAt.getTime()) / 1000;
  const text = [
    `Run: \`npx tsx bench/replicas.ts${process.argv.slice(2).filter((a) => a !== '--no-write').map((a) => ` ${a}`).join('')}\` on ${startedAt.toISOString().slice(0, 10)} (${Math.round(seconds)} s).`,
    '',
    machineLine(machine, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: one standalone emulator (**cheap** images, **${latencyMs} ms** per job) and two service processes (\`node --import tsx src/main.ts\`), all on 127.0.0.1, ` +
      `sharing PostgreSQL 127.0.0.1:5432 (a throwaway schema through \`search_path\` in \`DATABASE_URL\`) and Redis 127.0.0.1:6379 (\`REDIS_URL\`, a unique \`REDIS_KEY_PREFIX\`); ` +
      `\`DEFAULT_RPM_LIMIT=1000000\` so every request takes a rate-limit token from Redis without ever being refused; info access logs to a file. ` +
      `The client (node:http keep-alive, closed loop) round-robins between the processes of the row, and between its *API keys*: *unbudgeted* are static keys without a budget, *budgeted* keys issued through the admin API with a budget of $${NEVER_REACHED_USD} (never reached: every request takes a hold from its process's budget slice, none is refused). ${rounds} alternating rounds (in each, every plan cell in turn${fundings.length > 1 ? ', each funding on 1, then 2 processes' : ', on 1, then 2 processes'}) of ${durationMs / 1000} s after ${warmupMs / 1000} s of warm-up; medians over rounds.`,
    '',
    table(['concurrency', 'API keys', 'keys', 'processes', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'CPU of process a + b', 'service CPU ms/req', 'PostgreSQL CPU ms/req', '2 ÷ 1 req/s'], rows),
    '',
    '*CPU of process a + b*: each service process\'s CPU over the round as a share of one core (/proc/<pid>/stat). *service CPU ms/req*: both processes together per completed request. ' +
      '*PostgreSQL CPU ms/req*: every postgres process\'s CPU over the round (the table below) ÷ the round\'s requests, median over rounds (issue 22\'s measure). ' +
      `The machine has ${machine.nproc} vCPUs, shared here with the emulator, PostgreSQL, Redis and this client (and, on a busy host, other work: see the load average), ` +
      'so a second process can only add what CPU is left.',
    '',
    `**Where the machine's CPU went** (cores, median over rounds; ${machine.nproc} in all; from /proc/<pid>/stat and /proc/stat. *PostgreSQL* and *Redis* are every postgres and redis-server process, ` +
      '*other processes*: everything else running on the host (here mostly: ' + (topOthers || 'none') + '); *not attributed*: busy time no process was charged with (interrupts, the loopback network\'s softirq work, processes that exited mid-round))',
    '',
    table(['concurrency', 'API keys', 'keys', 'processes', ...budgetKeys], budgetRows),
    '',
    ...(roundErrors.length ? ['**Errors**', '', ...roundErrors.map((e) => `- ${e}`), ''] : []),
    check
      ? `Consistency across processes: ${tally.ok} answers 200 (${tally.failed} failed), ${check.ledgerRows} ledger rows in PostgreSQL, ${check.emulatorJobs} jobs seen by the emulator` +
        `${check.ledgerRows === tally.ok + tally.failed && check.emulatorJobs === tally.ok ? ': every request metered once, none lost.' : ' — **they differ** (see the logs).'}`
      : 'Consistency check not run.',
  ].join('\n');
  process.stdout.write(`\n${text}\n`);
  if (!args['no-write']) {
    await writeSection(
      'replicas',
      'More than one process: 1 vs 2 replicas on PostgreSQL + Redis (issue 6)',
      `\`\`\`sh
npx tsx bench/replicas.ts            # concurrency 16 and 64 with one API key, 64 with 16 keys, unbudgeted and budgeted keys; 5 rounds of 15 s; about 18 minutes
npx tsx bench/replicas.ts --quick    # 2 rounds of 5 s, unbudgeted keys only
npx tsx bench/replicas.ts --quick --budgeted               # budgeted keys only (--funding=unbudgeted,budgeted: both)
\`\`\`

Needs PostgreSQL on 127.0.0.1:5432 (database \`test\`, user \`postgres\`; a schema is created and dropped) and
Redis on 127.0.0.1:6379 (keys under a unique prefix, deleted at the end); \`--pg\` / \`--redis\` point elsewhere.`,
      text,
    );
    log('wrote bench/README.md');
  }
}

await main();
