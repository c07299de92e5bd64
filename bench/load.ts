/**
 * Issue 5's load test: 1,000 concurrent slow requests (the emulator takes
 * seconds per job) held by one service process, without errors; p50/p99 and
 * the service's peak memory.
 *
 *   npx tsx bench/load.ts [--quick] [--concurrency=1000] [--latency=3000] [--waves=N]
 *       [--ledgers=sqlite,sqlite-tmpfs,postgres] [--pg=postgres://postgres@127.0.0.1:5432/test] [--no-write]
 *
 * The service and the emulator run as separate processes on 127.0.0.1; this
 * process only sends requests and reads /proc. A wave sends `concurrency`
 * requests at the same instant, so at its peak every one of them is inside
 * the service at once; the wave ends when the last one is answered. Each
 * request is split, by joining on fal's request id with the emulator's
 * timestamps, into ingress (sent → job submitted), the job itself, and
 * completion-to-response, which shows where any queueing happens.
 */
import { parseArgs } from 'node:util';
import { statfsSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import { keepAliveAgent, post, type Reply } from './lib/http-client.js';
import { describeMachine } from './lib/machine.js';
import { fixed, ms, table } from './lib/markdown.js';
import { listenOverflows, MemSampler, portOf, readCpuMs, readMem, readSockets } from './lib/procfs.js';
import { BENCH_FAL_CONCURRENCY, startEmulatorProcess, startServiceProcess, type NodeChild } from './lib/procs.js';
import { machineLine, mib, writeSection } from './lib/readme-section.js';
import { AUTH, emulatorAdmin, imageBody, log, pgSchema, serviceEnv, sleep, tempDir, timeBudget } from './lib/scale.js';
import { summarize, type Summary } from './lib/stats.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    concurrency: { type: 'string', default: '1000' },
    latency: { type: 'string', default: '3000' },
    waves: { type: 'string' },
    ledgers: { type: 'string', default: 'sqlite,sqlite-tmpfs,postgres' },
    pg: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    'no-write': { type: 'boolean', default: false },
  },
  strict: true,
});

const concurrency = Number(args.concurrency);
const latencyMs = Number(args.latency);
const waves = Number(args.waves ?? (args.quick ? 1 : 2));
type Ledger = 'sqlite' | 'sqlite-tmpfs' | 'postgres';
const ledgers = args.ledgers.split(',') as Ledger[];
const REQUEST_TIMEOUT_MS = 330_000; // past the service's own 300 s deadline: its answer, not ours, ends a request
for (const l of ledgers) if (!['sqlite', 'sqlite-tmpfs', 'postgres'].includes(l)) throw new Error(`unknown ledger ${l}`);
timeBudget(ledgers.length * (waves + 1) * (REQUEST_TIMEOUT_MS + 30_000), 'bench/load.ts');

interface Sent {
  sentWallMs: number;
  reply?: Reply;
  error?: string;
  errorAfterMs?: number;
  falId?: string;
}

interface WaveFigures {
  ledger: string;
  wave: number;
  requests: number;
  ok: number;
  errors: Map<string, number>;
  latency: Summary;
  ingress: Summary;
  job: Summary;
  c2r: Summary;
  wallS: number;
  maxInbound: number;
  maxUpstream: number;
  /** Connections the kernel dropped from a full accept queue during the wave (machine-wide counter). */
  overflows: number;
  cpuMsPerRequest: number;
  cpuUtil: number;
  streamsPerJob: number;
  pollsPerJob: number;
}

interface LedgerFigures {
  ledger: string;
  idleRss: number;
  peakRss: number;
  waves: WaveFigures[];
  exit: number | string;
}

async function runLedger(ledger: Ledger, emu: NodeChild, dir: string): Promise<LedgerFigures> {
  const admin = emulatorAdmin(emu.url);
  const schema = ledger === 'postgres' ? await pgSchema(args.pg, 'bench_load') : undefined;
  // tmpfs makes fsync free: the difference to *sqlite* is what the default's durable commits cost.
  const shm = ledger === 'sqlite-tmpfs' ? await tempDir('gw-load-', '/dev/shm') : undefined;
  const dataDir = shm?.path ?? join(dir, `data-${ledger}`);
  const svc = await startServiceProcess(dir, serviceEnv(emu.url, dataDir, schema ? { DATABASE_URL: schema.url } : {}), `service-${ledger}`);
  let agent = keepAliveAgent();
  const url = `${svc.url}/v1/images/generations`;
  const body = imageBody();
  try {
    log(`${ledger}: service pid ${svc.pid} at ${svc.url}; warming up`);
    // JIT, connection pools and the ledger's first pages, outside every figure.
    for (let i = 0; i < 4; i++) await Promise.all(Array.from({ length: 10 }, () => post(url, body, { agent, headers: AUTH, timeoutMs: 60_000 })));
    await admin.reset();
    await sleep(1000);
    const idleRss = readMem(svc.pid).rss;
    const sampler = new MemSampler(svc.pid, 100).start();
    const out: WaveFigures[] = [];
    for (let w = 0; w < waves; w++) {
      const sent: Sent[] = [];
      let maxInbound = 0;
      let maxUpstream = 0;
      const sockTimer = setInterval(() => {
        try {
          const s = readSockets(svc.pid, portOf(svc.url), [portOf(emu.url)]);
          maxInbound = Math.max(maxInbound, s.inbound - 1); // minus the listening socket
          maxUpstream = Math.max(maxUpstream, s.upstream[portOf(emu.url)]!);
        } catch {
          // the process is gone; the wave's errors will say so
        }
      }, 500);
      // Fresh connections for every wave: node:http's agent would reuse sockets the service
      // is closing at its 5 s keep-alive timeout (it ignores the Keep-Alive: timeout hint),
      // and those races would be counted as the service's errors.
      agent.destroy();
      agent = keepAliveAgent();
      const cpu0 = readCpuMs(svc.pid);
      const overflows0 = listenOverflows();
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          const s: Sent = { sentWallMs: Date.now() };
          sent.push(s);
          try {
            s.reply = await post(url, body, { agent, headers: AUTH, timeoutMs: REQUEST_TIMEOUT_MS });
            if (s.reply.status === 200) s.falId = (JSON.parse(s.reply.body.toString()) as { meta: { fal_request_id: string } }).meta.fal_request_id;
          } catch (err) {
            s.error = (err as Error).message;
            s.errorAfterMs = Date.now() - s.sentWallMs;
          }
        }),
      );
      const wallS = (performance.now() - t0) / 1000;
      const cpuMs = readCpuMs(svc.pid) - cpu0;
      const overflows = listenOverflows() - overflows0;
      clearInterval(sockTimer);
      const jobs = new Map((await admin.jobs()).map((j) => [j.request_id, j]));
      const stats = await admin.stats();
      await admin.reset();

      const errors = new Map<string, number>();
      const lat: number[] = [];
      const ingress: number[] = [];
      const job: number[] = [];
      const c2r: number[] = [];
      for (const s of sent) {
        if (s.reply?.status === 200) {
          lat.push(s.reply.endedAt - s.reply.startedAt);
          const j = s.falId ? jobs.get(s.falId) : undefined;
          if (j?.completed_at !== undefined) {
            ingress.push(j.submitted_at - s.sentWallMs);
            job.push(j.completed_at - j.submitted_at);
            c2r.push(s.reply.doneAtWallMs - j.completed_at);
          }
          continue;
        }
        let key = s.error ? `client: ${s.error}` : `HTTP ${s.reply!.status}`;
        if (s.reply) {
          try {
            key += ` ${(JSON.parse(s.reply.body.toString()) as { error?: { code?: string } }).error?.code ?? ''}`;
          } catch {
            // not our error shape; the status says enough
          }
        }
        if (s.errorAfterMs !== undefined) key += ` (after ${(s.errorAfterMs / 1000).toFixed(0)} s)`;
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
      const submitted = stats.submit ?? 0;
      const f: WaveFigures = {
        ledger,
        wave: w + 1,
        requests: sent.length,
        ok: lat.length,
        errors,
        latency: summarize(lat),
        ingress: summarize(ingress),
        job: summarize(job),
        c2r: summarize(c2r),
        wallS,
        maxInbound,
        maxUpstream,
        overflows,
        cpuMsPerRequest: cpuMs / sent.length,
        cpuUtil: cpuMs / 1000 / wallS,
        streamsPerJob: submitted ? (stats.stream ?? 0) / submitted : Number.NaN,
        pollsPerJob: submitted ? (stats.status ?? 0) / submitted : Number.NaN,
      };
      out.push(f);
      log(
        `${ledger} wave ${w + 1}: ${f.ok}/${f.requests} ok, p50 ${ms(f.latency.p50)} p99 ${ms(f.latency.p99)} ms, ${wallS.toFixed(1)} s, ` +
          `inbound ≤ ${maxInbound}, upstream ≤ ${maxUpstream}, RSS peak ${mib(sampler.peakRss)}${errors.size ? `, errors ${JSON.stringify([...errors])}` : ''}`,
      );
      await sleep(2000);
    }
    sampler.stop();
    const peakRss = readMem(svc.pid).hwm;
    agent.destroy();
    const exit = await svc.stop(30_000);
    return { ledger, idleRss, peakRss, waves: out, exit };
  } finally {
    agent.destroy();
    await svc.stop(5_000);
    await schema?.drop();
    await shm?.remove();
  }
}

function render(all: LedgerFigures[], startedAt: Date, loadAtStart: ReturnType<typeof describeMachine>, seconds: number): string {
  const fsType = (() => {
    try {
      return statfsSync(os.tmpdir()).type === 0x01021994 ? 'tmpfs' : 'a disk file system (not tmpfs)';
    } catch {
      return 'unknown';
    }
  })();
  const rows = all.flatMap((l) =>
    l.waves.map((w) => [
      l.ledger,
      String(w.wave),
      `${w.ok}/${w.requests}`,
      w.errors.size ? `**${[...w.errors.values()].reduce((a, b) => a + b, 0)}**` : '0',
      ms(w.latency.p50),
      ms(w.latency.p99),
      ms(w.latency.max),
      `${ms(w.ingress.p50)} / ${ms(w.ingress.p99)}`,
      ms(w.job.p50),
      `${ms(w.c2r.p50)} / ${ms(w.c2r.p99)}`,
      w.wallS.toFixed(1),
      String(w.maxInbound),
      String(w.maxUpstream),
      String(w.overflows),
      fixed(w.cpuMsPerRequest, 1),
      `${Math.round(w.cpuUtil * 100)}%`,
      `${fixed(w.streamsPerJob)} / ${fixed(w.pollsPerJob)}`,
    ]),
  );
  const mem = all.map((l) => [l.ledger, mib(l.idleRss), `**${mib(l.peakRss)}**`, mib(l.peakRss - l.idleRss), String(l.exit)]);
  const errorLines = all.flatMap((l) => l.waves.flatMap((w) => [...w.errors].map(([k, n]) => `- ${l.ledger}, wave ${w.wave}: ${n} × ${k}`)));
  return [
    `Run: \`npx tsx bench/load.ts${args.quick ? ' --quick' : ''}\` on ${startedAt.toISOString().slice(0, 10)} (${Math.round(seconds)} s).`,
    '',
    machineLine(loadAtStart, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: emulator and service as separate processes on 127.0.0.1; emulator in **cheap** image mode, **${latencyMs} ms** per job; ` +
      `service defaults (info access logs to a file, \`MAX_IN_FLIGHT\` 2000, 256 status streams, 200 polls/s) except \`DEFAULT_RPM_LIMIT=0\`. ` +
      `Ledger: *sqlite* = the default SQLite file (synchronous=FULL) under os.tmpdir(), ${fsType}; *sqlite-tmpfs* = the same on /dev/shm, where fsync costs nothing (not a deployment: it separates the cost of durable commits); *postgres* = PostgreSQL on 127.0.0.1 in a throwaway schema (pool of 10, the service's default). ` +
      `Each wave: ${concurrency} requests (url output) sent at the same instant, each on a new node:http connection (no reuse between waves).`,
    '',
    table(
      ['ledger', 'wave', 'ok', 'errors', 'p50', 'p99', 'max', 'ingress p50 / p99', 'job p50', 'c2r p50 / p99', 'wave s', 'inbound sockets', 'upstream sockets', 'listen overflows', 'CPU ms/req', 'CPU', 'streams / polls per job'],
      rows,
    ),
    '',
    'Latencies in ms. *ingress* = sent → the emulator saw the submit (HTTP, auth, validation, ledger reserve, submit); *job* = the emulated job; ' +
      '*c2r* = the emulator marked it COMPLETED → the client held the whole answer (status stream or poll, result GET, settle, response). ' +
      '*inbound/upstream sockets*: most TCP sockets the service held at once to callers / to the emulator (sampled every 0.5 s from /proc). ' +
      '*listen overflows*: connection attempts the kernel dropped because the service\'s accept queue (Node\'s default backlog, 511) was full, from /proc/net/netstat (machine-wide; nothing else here listens under load). ' +
      '*CPU*: the service process only, per request and as a share of one core over the wave.',
    '',
    '**Service memory** (VmRSS from /proc; idle = after warm-up, before the first wave; peak = VmHWM at the end)',
    '',
    table(['ledger', 'idle RSS', 'peak RSS', 'peak − idle', 'exit code on SIGTERM'], mem),
    ...(errorLines.length ? ['', '**Errors**', '', ...errorLines] : ['', 'Errors: none.']),
  ].join('\n');
}

const INTRO = `\`\`\`sh
npx tsx bench/load.ts            # 2 waves per ledger, a few minutes on a quiet 2-vCPU machine
npx tsx bench/load.ts --quick    # 1 wave per ledger
\`\`\`

Issue 5: hold 1,000 concurrent slow requests without errors. The service and the emulator run as
separate processes (\`node --import tsx src/main.ts\`, \`src/emulator/main.ts\`); the bench process only sends
requests and reads the service's /proc entries. Needs PostgreSQL on 127.0.0.1:5432 for the *postgres* rows
(a schema is created and dropped); \`--ledgers=sqlite,sqlite-tmpfs\` skips it.`;

async function main(): Promise<void> {
  const machine = describeMachine();
  const startedAt = new Date();
  const dir = await tempDir('gw-load-');
  const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: String(latencyMs), EMULATOR_IMAGE_MODE: 'cheap', EMULATOR_CONCURRENCY: BENCH_FAL_CONCURRENCY });
  const all: LedgerFigures[] = [];
  try {
    for (const l of ledgers) all.push(await runLedger(l, emu, dir.path));
  } finally {
    await emu.stop();
    // BENCH_KEEP=1 keeps the processes' logs for a post-mortem.
    if (process.env.BENCH_KEEP) log(`logs kept in ${dir.path}`);
    else await dir.remove();
  }
  const text = render(all, startedAt, machine, (Date.now() - startedAt.getTime()) / 1000);
  process.stdout.write(`\n${text}\n`);
  if (!args['no-write']) {
    await writeSection('load', 'Load: 1,000 concurrent slow requests (issue 5)', INTRO, text);
    log('wrote bench/README.md');
  }
}

await main();
