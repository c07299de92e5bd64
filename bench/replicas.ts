/**
 * Issue 6, "More than one process": throughput of 1 vs 2 service processes
 * sharing PostgreSQL (ledger, keys, idempotency) and Redis (rate limits), in
 * front of one standalone emulator, with this process round-robining
 * requests between them.
 *
 *   npx tsx bench/replicas.ts [--quick] [--concurrency=16,64] [--rounds=N] [--duration=S]
 *       [--pg=postgres://postgres@127.0.0.1:5432/test] [--redis=redis://127.0.0.1:6379] [--no-write]
 *
 * Both processes run for the whole bench; in "1" rounds only the first gets
 * requests. Rounds alternate 1, 2, 1, 2, … so the drift of a shared machine
 * lands on both alike, and figures are medians over rounds
 * (bench/lib/rounds.ts). At the end the ledger's rows are counted against
 * the answers the client got and the jobs the emulator saw: nothing lost
 * or doubled between processes.
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import pg from 'pg';
import { Redis } from 'ioredis';
import { keepAliveAgent, post } from './lib/http-client.js';
import type { Call } from './lib/load.js';
import { describeMachine } from './lib/machine.js';
import { fixed, ms, rate, table } from './lib/markdown.js';
import type { BenchPath, BenchUpstream } from './lib/paths.js';
import { pidsByComm, readCpuMs, readCpuMsOf, readMachineCpu } from './lib/procfs.js';
import { startEmulatorProcess, startServiceProcess, type NodeChild } from './lib/procs.js';
import { machineLine, writeSection } from './lib/readme-section.js';
import { median } from './lib/stats.js';
import { pathFigures, runPathRound, type RoundResult } from './lib/rounds.js';
import { AUTH, emulatorAdmin, imageBody, log, pgSchema, serviceEnv, tempDir, timeBudget } from './lib/scale.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    concurrency: { type: 'string', default: '16,64' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    latency: { type: 'string', default: '20' },
    pg: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
    'no-write': { type: 'boolean', default: false },
  },
  strict: true,
});

const concurrencies = args.concurrency.split(',').map(Number);
const rounds = Number(args.rounds ?? (args.quick ? 2 : 5));
const durationMs = Number(args.duration ?? (args.quick ? 5 : 15)) * 1000;
const warmupMs = 1500;
const latencyMs = Number(args.latency);
timeBudget(concurrencies.length * rounds * 2 * (durationMs + warmupMs + 30_000) + 5 * 60_000, 'bench/replicas.ts');

/** The emulator's counters are not needed per round: completion timestamps are issue 3's subject (bench/overhead.ts). */
const noUpstream: BenchUpstream = { label: 'emulator (standalone)', reset() {}, completedAtMs: () => undefined, counters: () => ({ jobs: 0, calls: {} }) };

interface Tally {
  ok: number;
  failed: number;
}

function roundRobin(id: string, targets: NodeChild[], tally: Tally): BenchPath {
  const agent = keepAliveAgent();
  const urls = targets.map((t) => `${t.url}/v1/images/generations`);
  const body = imageBody();
  let next = 0;
  const call: Call = async (signal) => {
    const url = urls[next++ % urls.length]!;
    const r = await post(url, body, { agent, headers: AUTH, timeoutMs: 60_000 });
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
    upstream: noUpstream,
    call,
    async close() {
      agent.destroy();
    },
  };
}

interface RoundCpu {
  path: string;
  concurrency: number;
  /** Where the machine's CPU went during the round, in cores (CPU ms per wall ms). */
  cores: Record<'service a' | 'service b' | 'emulator' | 'PostgreSQL' | 'Redis' | 'bench client' | 'everything else' | 'idle', number>;
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
  let check: { ledgerRows: number; emulatorJobs: number } | undefined;
  try {
    const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: String(latencyMs), EMULATOR_IMAGE_MODE: 'cheap' });
    children.push(emu);
    const env = serviceEnv(emu.url, `${dir.path}/unused-data`, {
      DATABASE_URL: schema.url,
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
    const paths = [roundRobin('1', [a], tally), roundRobin('2', [a, b], tally)];
    for (const c of concurrencies) {
      for (let r = 0; r < rounds; r++) {
        for (const p of paths) {
          const c0 = [readCpuMs(a.pid), readCpuMs(b.pid)];
          const pgPids = pidsByComm('postgres');
          const redisPids = pidsByComm('redis-server');
          const other0 = { emu: readCpuMs(emu.pid), pg: readCpuMsOf(pgPids), redis: readCpuMsOf(redisPids), self: process.cpuUsage(), machine: readMachineCpu() };
          const t0 = performance.now();
          const res = await runPathRound(p, c, r, { warmupMs, durationMs, maxRequests: 200_000, requestTimeoutMs: 60_000 });
          const wall = performance.now() - t0;
          const used = [readCpuMs(a.pid) - c0[0]!, readCpuMs(b.pid) - c0[1]!];
          const self = process.cpuUsage(other0.self);
          const machineNow = readMachineCpu();
          const spent = {
            emu: readCpuMs(emu.pid) - other0.emu,
            pg: readCpuMsOf(pgPids) - other0.pg,
            redis: readCpuMsOf(redisPids) - other0.redis,
            self: (self.user + self.system) / 1000,
            busy: machineNow.busyMs - other0.machine.busyMs,
            total: machineNow.totalMs - other0.machine.totalMs,
          };
          const cores = {
            'service a': used[0]! / wall,
            'service b': used[1]! / wall,
            emulator: spent.emu / wall,
            PostgreSQL: spent.pg / wall,
            Redis: spent.redis / wall,
            'bench client': spent.self / wall,
            'everything else': (spent.busy - used[0]! - used[1]! - spent.emu - spent.pg - spent.redis - spent.self) / wall,
            idle: (spent.total - spent.busy) / wall,
          };
          results.push(res);
          // Whole round (warm-up included) against requests of the whole round: both sides cover the same span.
          const n = res.throughput * (durationMs / 1000);
          cpu.push({ path: p.id, concurrency: c, cores, util: used.map((u) => u / wall), cpuMsPerRequest: (used[0]! + used[1]!) / (wall / durationMs) / Math.max(1, n) });
          log(`c=${c} round ${r + 1} ${p.label}: ${rate(res.throughput)} req/s, p50 ${ms(res.latency.p50)} ms, p99 ${ms(res.latency.p99)} ms, errors ${res.errors}, CPU ${used.map((u) => `${Math.round((u / wall) * 100)}%`).join(' + ')}`);
        }
      }
    }
    for (const p of paths) await p.close();

    const db = new pg.Client({ connectionString: schema.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ n: string }>('select count(*) as n from requests');
      check = { ledgerRows: Number(rows[0]!.n), emulatorJobs: (await emulatorAdmin(emu.url).health()).jobs };
    } finally {
      await db.end();
    }
  } finally {
    for (const c of children.reverse()) await c.stop(15_000);
    await schema.drop();
    const redis = new Redis(args.redis, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length) await redis.del(...keys);
    } catch (err) {
      log(`could not clean Redis keys ${prefix}*: ${(err as Error).message}`);
    } finally {
      redis.disconnect();
    }
    if (process.env.BENCH_KEEP) log(`logs kept in ${dir.path}`);
    else await dir.remove();
  }

  const rows = concurrencies.flatMap((c) => {
    const one = pathFigures(results, '1', c);
    const two = pathFigures(results, '2', c);
    const gain = median(
      Array.from({ length: rounds }, (_, r) => {
        const x = results.find((q) => q.path === '1' && q.concurrency === c && q.round === r);
        const y = results.find((q) => q.path === '2' && q.concurrency === c && q.round === r);
        return x && y ? y.throughput / x.throughput : Number.NaN;
      }),
    );
    const util = (path: string) => {
      const rs = cpu.filter((q) => q.path === path && q.concurrency === c);
      return [0, 1].map((i) => `${Math.round(median(rs.map((q) => q.util[i]!)) * 100)}%`).join(' + ');
    };
    const cpuPer = (path: string) => fixed(median(cpu.filter((q) => q.path === path && q.concurrency === c).map((q) => q.cpuMsPerRequest)), 1);
    return [
      [String(c), '1', rate(one.throughput), ms(one.p50), ms(one.p99), String(one.errors), util('1'), cpuPer('1'), ''],
      [String(c), '2', rate(two.throughput), ms(two.p50), ms(two.p99), String(two.errors), util('2'), cpuPer('2'), `**${fixed(gain)}×**`],
    ];
  });
  const budgetKeys = ['service a', 'service b', 'emulator', 'PostgreSQL', 'Redis', 'bench client', 'everything else', 'idle'] as const;
  const budgetRows = concurrencies.flatMap((c) =>
    ['1', '2'].map((path) => {
      const rs = cpu.filter((q) => q.path === path && q.concurrency === c);
      return [String(c), path, ...budgetKeys.map((k) => fixed(median(rs.map((q) => q.cores[k])), 2))];
    }),
  );
  const seconds = (Date.now() - startedAt.getTime()) / 1000;
  const text = [
    `Run: \`npx tsx bench/replicas.ts${args.quick ? ' --quick' : ''}\` on ${startedAt.toISOString().slice(0, 10)} (${Math.round(seconds)} s).`,
    '',
    machineLine(machine, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: one standalone emulator (**cheap** images, **${latencyMs} ms** per job) and two service processes (\`node --import tsx src/main.ts\`), all on 127.0.0.1, ` +
      `sharing PostgreSQL 127.0.0.1:5432 (a throwaway schema through \`search_path\` in \`DATABASE_URL\`) and Redis 127.0.0.1:6379 (\`REDIS_URL\`, a unique \`REDIS_KEY_PREFIX\`); ` +
      `\`DEFAULT_RPM_LIMIT=1000000\` so every request takes a rate-limit token from Redis without ever being refused; info access logs to a file. ` +
      `The client (node:http keep-alive, closed loop) round-robins between the processes of the row. ${rounds} alternating rounds (1, 2, 1, 2, …) of ${durationMs / 1000} s after ${warmupMs / 1000} s of warm-up; medians over rounds.`,
    '',
    table(['concurrency', 'processes', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'CPU of process a + b', 'service CPU ms/req', '2 ÷ 1 req/s'], rows),
    '',
    '*CPU of process a + b*: each service process\'s CPU over the round as a share of one core (/proc/<pid>/stat). *service CPU ms/req*: both processes together per completed request. ' +
      `The machine has ${machine.nproc} vCPUs, shared here with the emulator, PostgreSQL, Redis and this client (and, on a busy host, other work: see the load average), ` +
      'so a second process can only add what CPU is left.',
    '',
    `**Where the machine's CPU went** (cores, median over rounds; ${machine.nproc} in all; from /proc/<pid>/stat and /proc/stat. *PostgreSQL* and *Redis* are every postgres and redis-server process, ` +
      '*everything else* is the machine\'s busy time minus all of the above: other tenants of a shared host, the kernel\'s own work)',
    '',
    table(['concurrency', 'processes', ...budgetKeys], budgetRows),
    '',
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
npx tsx bench/replicas.ts            # concurrency 16 and 64, 5 rounds of 15 s each; about 6 minutes
npx tsx bench/replicas.ts --quick    # 2 rounds of 5 s
\`\`\`

Needs PostgreSQL on 127.0.0.1:5432 (database \`test\`, user \`postgres\`; a schema is created and dropped) and
Redis on 127.0.0.1:6379 (keys under a unique prefix, deleted at the end); \`--pg\` / \`--redis\` point elsewhere.`,
      text,
    );
    log('wrote bench/README.md');
  }
}

await main();
