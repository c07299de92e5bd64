/**
 * Issue 6, "Many waiting jobs": 10,000 jobs in flight at once on one service
 * process. Memory per waiting job, upstream status traffic per job-second,
 * the sockets the process holds, and how long a finished job takes to reach
 * its caller — with status polling (the default) and with fal webhooks.
 *
 *   npx tsx bench/waiting.ts [--quick] [--jobs=10000] [--modes=polling,webhook]
 *       [--plateau=30] [--ledger=tmpfs|disk] [--no-write]
 *
 * Why jobs are held rather than given a fixed latency: on this machine the
 * service takes minutes (not the 20–30 s of a realistic job) to accept
 * 10,000 requests, so with a fixed latency the first jobs would finish
 * before the last were submitted and 10,000 would never be waiting at once.
 * The emulator's `never_finish` fault holds every job until all are in
 * flight and the plateau is measured; then each job is released at its
 * submit time + L, with L = (ramp + plateau): exactly a fixed emulator
 * latency of L, chosen once the ramp's length is known.
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { getText, keepAliveAgent, post, promValue, type Reply } from './lib/http-client.js';
import { describeMachine } from './lib/machine.js';
import { fixed, ms, table } from './lib/markdown.js';
import { MemSampler, portOf, readCpuMs, readMem, readSockets, type Sockets } from './lib/procfs.js';
import { BENCH_FAL_CONCURRENCY, freePort, startEmulatorProcess, startServiceProcess, type NodeChild } from './lib/procs.js';
import { kib, machineLine, mib, writeSection } from './lib/readme-section.js';
import { AUTH, emulatorAdmin, imageBody, log, serviceEnv, sleep, tempDir, timeBudget } from './lib/scale.js';
import { summarize, type Summary } from './lib/stats.js';
import { perJobGrowth, summarizeSnapshot, takeSnapshot } from './probes/heap-snapshot.js';
import { copyFile, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    jobs: { type: 'string' },
    modes: { type: 'string', default: 'polling,webhook' },
    plateau: { type: 'string' },
    ledger: { type: 'string', default: 'tmpfs' },
    'no-diagnostics': { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false },
    /** Skip the measured runs: only the heap-snapshot pass (with --keep-snapshots, to read them yourself). */
    'diagnostics-only': { type: 'boolean', default: false },
    /** Copy the diagnostic pass's snapshots here instead of deleting them (see bench/probes/heap-diff.ts). */
    'keep-snapshots': { type: 'string' },
  },
  strict: true,
});

const JOBS = Number(args.jobs ?? (args.quick ? 2000 : 10_000));
const PLATEAU_S = Number(args.plateau ?? (args.quick ? 15 : 30));
/** `webhook-default-grace`: webhook mode with FAL_WEBHOOK_GRACE_MS left at its default; diagnostic pass only. */
type Mode = 'polling' | 'webhook' | 'webhook-default-grace';
const modes = args.modes.split(',') as Mode[];
for (const m of modes) if (m !== 'polling' && m !== 'webhook') throw new Error(`unknown mode ${m}`);
if (args.ledger !== 'tmpfs' && args.ledger !== 'disk') throw new Error('--ledger must be tmpfs or disk');
/** The heap-snapshot pass: fewer jobs, as a snapshot of the full run's heap would take minutes and gigabytes to write and read. */
const DIAG_JOBS = args.quick ? 500 : 1000;
const diagnostics = !args['no-diagnostics'];
/** Requests sent but not yet submitted to the emulator: enough to keep the service busy, few enough not to overflow its accept queue. */
const INGRESS_WINDOW = 64;
/** The service's default STATUS_STREAMS_MAX. */
const STREAMS = 256;
const REQUEST_TIMEOUT_MS = 1_800_000;
/** Issue 6: under 20 KB per waiting job, with KB read as 1,000 bytes (the stricter reading). */
const TARGET_BYTES = 20_000;
timeBudget(modes.length * (45 + (diagnostics ? 10 : 0)) * 60_000, 'bench/waiting.ts');

interface ModeFigures {
  mode: Mode;
  jobs: number;
  ok: number;
  errors: Map<string, number>;
  rampS: number;
  idleRss: number;
  plateauRss: number;
  peakRss: number;
  idleHeap: number;
  plateauHeap: number;
  /** V8 heap committed (nodejs_heap_size_total_bytes): what the heap holds of RSS, used or not. */
  idleHeapTotal: number;
  plateauHeapTotal: number;
  inFlightAtPlateau: number;
  plateauS: number;
  /** Emulator calls during the plateau. */
  plateauStatus: number;
  plateauStreams: number;
  /** Whole run, from the first submit to the last answer. */
  totalStatus: number;
  totalStreams: number;
  jobSeconds: number;
  sockets: Sockets;
  upstreamPort: number;
  latencyS: number;
  c2r: Summary;
  /** p50 of c2r for each tenth of the jobs, in order of completion. */
  c2rTenths: number[];
  rampCpuMsPerJob: number;
  releaseCpuMsPerJob: number;
  rampUtil: number;
  releaseUtil: number;
  releaseS: number;
  /** Webhook mode: the emulator's delivery log. */
  webhooks?: { received: number; answeredOk: number; callerGone: number; logCapped: boolean; attempts: number; failed: number; retried: number; firstFailure: string | undefined; completionToFirstAttempt: Summary };
  /** The first STREAMS jobs submitted (status streams) and the rest (polling); meaningful in polling mode. */
  c2rStreamed: Summary;
  c2rOverflow: Summary;
  cpuPlateauUtil: number;
  emulatorRss: number;
  /** Diagnostic pass only: heap snapshots (after a full collection) idle and at plateau. */
  heap?: { idle: Awaited<ReturnType<typeof summarizeSnapshot>>; plateau: Awaited<ReturnType<typeof summarizeSnapshot>> };
}

async function snapshotSummary(pid: number, dir: string, alive: () => Promise<unknown>) {
  const file = await takeSnapshot(pid, dir, alive);
  try {
    return await summarizeSnapshot(file);
  } finally {
    if (args['keep-snapshots']) await copyFile(file, join(args['keep-snapshots'], basename(file)));
    await rm(file, { force: true });
  }
}

async function runMode(mode: Mode, emu: NodeChild, dir: string, JOBS: number, PLATEAU_S: number, snapshotDir?: string): Promise<ModeFigures> {
  const admin = emulatorAdmin(emu.url);
  await admin.reset();
  const data = await tempDir(`gw-wait-${mode}-`, args.ledger === 'tmpfs' ? '/dev/shm' : os.tmpdir());
  const extra: Record<string, string> = {
    MAX_IN_FLIGHT: String(JOBS + 1000),
    REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
  };
  if (mode !== 'polling') {
    // The service must know its own address before it starts: it is in every submit's fal_webhook.
    const port = await freePort();
    Object.assign(extra, {
      PORT: String(port),
      PUBLIC_BASE_URL: `http://127.0.0.1:${port}`,
      FAL_WEBHOOKS: 'true',
    });
    // The default (30 s) starts polling any job still waiting 30 s after its submit;
    // held jobs here wait minutes, and a callback is on time whenever it comes.
    if (mode === 'webhook') extra.FAL_WEBHOOK_GRACE_MS = String(REQUEST_TIMEOUT_MS);
  }
  const svc = await startServiceProcess(
    dir,
    serviceEnv(emu.url, data.path, extra),
    `service-${mode}${snapshotDir ? '-heap' : ''}`,
    snapshotDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] : [],
  );
  const agent = keepAliveAgent();
  const url = `${svc.url}/v1/images/generations`;
  const body = imageBody();
  const metrics = () => getText(`${svc.url}/metrics`, 120_000);
  try {
    log(`${mode}: service pid ${svc.pid} at ${svc.url}; warming up`);
    for (let i = 0; i < 5; i++) await Promise.all(Array.from({ length: 20 }, () => post(url, body, { agent, headers: AUTH, timeoutMs: 60_000 })));
    await admin.reset();
    await admin.armFaults([{ kind: 'never_finish', times: JOBS }]);
    await sleep(2000);
    const idleSampler = new MemSampler(svc.pid, 200).start();
    await sleep(3000);
    idleSampler.stop();
    const idleRss = idleSampler.medianBetween(0, Date.now());
    const idleText = await metrics();
    const idleHeap = promValue(idleText, 'nodejs_heap_size_used_bytes');
    const idleHeapTotal = promValue(idleText, 'nodejs_heap_size_total_bytes');
    const idleSnapshot = snapshotDir ? await snapshotSummary(svc.pid, snapshotDir, metrics) : undefined;

    // Ramp: keep at most INGRESS_WINDOW requests between "sent" and "submitted to fal".
    log(`${mode}: ramping to ${JOBS} jobs (idle RSS ${mib(idleRss)})`);
    const replies: Array<Promise<{ reply?: Reply; error?: string }>> = [];
    const rampStart = performance.now();
    const rampCpu0 = readCpuMs(svc.pid);
    let submitted = 0;
    let lastReport = 0;
    while (replies.length < JOBS) {
      submitted = (await admin.health()).jobs;
      const room = Math.min(JOBS - replies.length, submitted + INGRESS_WINDOW - replies.length);
      for (let i = 0; i < room; i++) {
        replies.push(post(url, body, { agent, headers: AUTH, timeoutMs: REQUEST_TIMEOUT_MS }).then((reply) => ({ reply }), (err: Error) => ({ error: err.message })));
      }
      if (performance.now() - lastReport > 15_000) {
        lastReport = performance.now();
        log(`${mode}: ${replies.length} sent, ${submitted} submitted, RSS ${mib(readMem(svc.pid).rss)}`);
      }
      await sleep(room > 0 ? 100 : 200);
    }
    let inFlight = 0;
    for (;;) {
      submitted = (await admin.health()).jobs;
      inFlight = promValue(await metrics(), 'gateway_jobs_in_flight');
      if (submitted >= JOBS && inFlight >= JOBS) break;
      await sleep(1000);
    }
    const rampS = (performance.now() - rampStart) / 1000;
    const rampCpuMs = readCpuMs(svc.pid) - rampCpu0;
    log(`${mode}: ${inFlight} jobs in flight after ${rampS.toFixed(0)} s; plateau of ${PLATEAU_S} s`);

    // Plateau: everything waits; nothing else happens.
    await sleep(3000);
    const s0 = await admin.stats();
    const cpu0 = readCpuMs(svc.pid);
    const t0 = Date.now();
    const sampler = new MemSampler(svc.pid, 250).start();
    await sleep((PLATEAU_S * 1000) / 2);
    const sockets = readSockets(svc.pid, portOf(svc.url), [portOf(emu.url)]);
    await sleep((PLATEAU_S * 1000) / 2);
    sampler.stop();
    const t1 = Date.now();
    const cpuPlateauUtil = (readCpuMs(svc.pid) - cpu0) / (t1 - t0);
    const s1 = await admin.stats();
    const plateauRss = sampler.medianBetween(t0, t1);
    const plateauText = await metrics();
    const plateauHeap = promValue(plateauText, 'nodejs_heap_size_used_bytes');
    const plateauHeapTotal = promValue(plateauText, 'nodejs_heap_size_total_bytes');
    log(`${mode}: V8 heap at plateau: used ${mib(plateauHeap)}, committed ${mib(plateauHeapTotal)} (idle ${mib(idleHeapTotal)}); spaces committed: ${plateauText.split('\n').filter((l) => l.startsWith('nodejs_heap_space_size_total_bytes')).map((l) => l.replace(/.*space="(\w+)".* (\d+)$/, (_m, sp: string, v: string) => `${sp} ${mib(Number(v))}`)).join(', ')}`);
    const emulatorRss = readMem(emu.pid).rss;
    const heap = idleSnapshot ? { idle: idleSnapshot, plateau: await snapshotSummary(svc.pid, snapshotDir!, metrics) } : undefined;
    log(`${mode}: plateau RSS ${mib(plateauRss)} (idle ${mib(idleRss)}): ${kib((plateauRss - idleRss) / JOBS)} per job; sockets ${JSON.stringify(sockets)}`);

    // Release: job i completes at its submit time + L, L = ramp + plateau so far.
    const jobs = (await admin.jobs()).sort((a, b) => a.submitted_at - b.submitted_at);
    const first = jobs[0]!.submitted_at;
    const latencyMs = Date.now() - first + 1000;
    log(`${mode}: releasing ${jobs.length} jobs as if each took ${(latencyMs / 1000).toFixed(0)} s`);
    const releaseAgent = keepAliveAgent();
    const releaseCpu0 = readCpuMs(svc.pid);
    const releaseStart = performance.now();
    let next = 0;
    const releaser = async () => {
      while (next < jobs.length) {
        const j = jobs[next++]!;
        const due = j.submitted_at + latencyMs - Date.now();
        if (due > 0) await sleep(due);
        const r = await post(`${emu.url}/_emulator/jobs/${j.request_id}/finish`, '', { agent: releaseAgent, timeoutMs: 60_000, discardBody: true });
        if (r.status !== 200) throw new Error(`finishing ${j.request_id}: HTTP ${r.status}`);
      }
    };
    await Promise.all(Array.from({ length: 8 }, releaser));
    releaseAgent.destroy();
    const settled = await Promise.all(replies);
    const releaseS = (performance.now() - releaseStart) / 1000;
    const releaseCpuMs = readCpuMs(svc.pid) - releaseCpu0;
    const peakRss = readMem(svc.pid).hwm;
    const s2 = await admin.stats();
    const done = new Map((await admin.jobs()).map((j) => [j.request_id, j]));

    const errors = new Map<string, number>();
    const c2r: number[] = [];
    // Status streams go to the first jobs to wait (up to STATUS_STREAMS_MAX, 256) and nobody
    // submits after the ramp, so every later job waits by polling until it is answered.
    const order = new Map([...done.values()].sort((x, y) => x.submitted_at - y.submitted_at).map((j, i) => [j.request_id, i]));
    const c2rStreamed: number[] = [];
    const c2rOverflow: number[] = [];
    let jobSeconds = 0;
    for (const r of settled) {
      if (r.reply?.status !== 200) {
        const k = r.error ? `client: ${r.error}` : `HTTP ${r.reply!.status} ${r.reply!.body.toString().slice(0, 160)}`;
        errors.set(k, (errors.get(k) ?? 0) + 1);
        continue;
      }
      const id = (JSON.parse(r.reply.body.toString()) as { meta: { fal_request_id: string } }).meta.fal_request_id;
      const j = done.get(id);
      if (j?.completed_at === undefined) continue;
      c2r.push(r.reply.doneAtWallMs - j.completed_at);
      ((order.get(id) ?? 0) < STREAMS ? c2rStreamed : c2rOverflow).push(r.reply.doneAtWallMs - j.completed_at);
      jobSeconds += (r.reply.doneAtWallMs - j.submitted_at) / 1000;
    }
    const c2rSummary = summarize(c2r);
    // c2r in order of completion, by tenths: a backlog that builds up during the release shows as a rising p50.
    const byCompletion = settled
      .flatMap((r) => {
        if (r.reply?.status !== 200) return [];
        const j = done.get((JSON.parse(r.reply.body.toString()) as { meta: { fal_request_id: string } }).meta.fal_request_id);
        return j?.completed_at === undefined ? [] : [[j.completed_at, r.reply.doneAtWallMs - j.completed_at] as const];
      })
      .sort((a, b) => a[0] - b[0])
      .map(([, v]) => v);
    const tenths = Array.from({ length: 10 }, (_, d) => summarize(byCompletion.slice(Math.floor((d * byCompletion.length) / 10), Math.floor(((d + 1) * byCompletion.length) / 10))).p50);
    let webhooks: ModeFigures['webhooks'];
    if (mode !== 'polling') {
      const m = await metrics();
      const route = { route: '/v1/fal/webhook' };
      const deliveries = await admin.webhooks();
      const firstAt = new Map<string, number>();
      for (const d of deliveries) if (d.attempt === 1) firstAt.set(d.request_id, Date.parse(d.at));
      const lag = [...firstAt].flatMap(([id, at]) => {
        const c = done.get(id)?.completed_at;
        return c === undefined ? [] : [at - c];
      });
      webhooks = {
        received: promValue(m, 'gateway_http_requests_total', route),
        answeredOk: promValue(m, 'gateway_http_requests_total', { ...route, status: '200' }),
        callerGone: promValue(m, 'gateway_http_requests_total', { ...route, status: '499' }),
        logCapped: deliveries.length >= 10_000,
        attempts: deliveries.length,
        failed: deliveries.filter((d) => !d.ok).length,
        retried: new Set(deliveries.filter((d) => d.attempt > 1).map((d) => d.request_id)).size,
        firstFailure: deliveries.find((d) => !d.ok)?.error ?? deliveries.find((d) => !d.ok)?.status?.toString(),
        completionToFirstAttempt: summarize(lag),
      };
    }
    const f: ModeFigures = {
      mode,
      jobs: JOBS,
      ok: c2r.length,
      errors,
      rampS,
      idleRss,
      plateauRss,
      peakRss,
      idleHeap,
      plateauHeap,
      idleHeapTotal,
      plateauHeapTotal,
      inFlightAtPlateau: inFlight,
      plateauS: (t1 - t0) / 1000,
      plateauStatus: (s1.status ?? 0) - (s0.status ?? 0),
      plateauStreams: (s1.stream ?? 0) - (s0.stream ?? 0),
      totalStatus: s2.status ?? 0,
      totalStreams: s2.stream ?? 0,
      jobSeconds,
      sockets,
      upstreamPort: portOf(emu.url),
      latencyS: latencyMs / 1000,
      c2r: c2rSummary,
      c2rTenths: tenths,
      rampCpuMsPerJob: rampCpuMs / JOBS,
      releaseCpuMsPerJob: releaseCpuMs / JOBS,
      releaseUtil: releaseCpuMs / 1000 / releaseS,
      rampUtil: rampCpuMs / 1000 / rampS,
      releaseS,
      webhooks,
      c2rStreamed: summarize(c2rStreamed),
      c2rOverflow: summarize(c2rOverflow),
      cpuPlateauUtil,
      emulatorRss,
      heap,
    };
    log(`${mode}: ${f.ok}/${JOBS} ok; c2r p50 ${ms(c2rSummary.p50)} p99 ${ms(c2rSummary.p99)} ms; status calls ${f.totalStatus}, streams ${f.totalStreams}`);
    return f;
  } finally {
    agent.destroy();
    await svc.stop(30_000);
    await data.remove();
  }
}

function render(all: ModeFigures[], diag: ModeFigures[], startedAt: Date, machine: ReturnType<typeof describeMachine>, seconds: number): string {
  const perJob = (f: ModeFigures) => (f.plateauRss - f.idleRss) / f.jobs;
  const memRows = all.map((f) => [
    f.mode,
    String(f.inFlightAtPlateau),
    mib(f.idleRss),
    mib(f.plateauRss),
    `**${kib(perJob(f))}**`,
    perJob(f) < TARGET_BYTES ? 'met' : `**missed** (${(perJob(f) / TARGET_BYTES).toFixed(2)}×)`,
    kib((f.plateauHeap - f.idleHeap) / f.jobs),
    kib((f.plateauHeapTotal - f.idleHeapTotal) / f.jobs),
    mib(f.peakRss),
    `${Math.round(f.cpuPlateauUtil * 100)}%`,
  ]);
  const trafficRows = all.map((f) => [
    f.mode,
    `${f.plateauStatus} / ${f.plateauStreams}`,
    `**${fixed((f.plateauStatus + f.plateauStreams) / (f.jobs * f.plateauS), 4)}**`,
    fixed(f.plateauStatus / f.plateauS, 0),
    `${f.totalStatus} / ${f.totalStreams}`,
    `**${fixed((f.totalStatus + f.totalStreams) / f.jobSeconds, 4)}**`,
  ]);
  const sockRows = all.map((f) => [f.mode, String(f.sockets.fds), String(f.sockets.inbound - 1), `**${f.sockets.upstream[f.upstreamPort]}**`, String(f.sockets.other)]);
  const c2rRow = (f: ModeFigures, which: string, s: Summary) => [
    f.mode,
    which,
    String(s.n),
    ms(s.p50),
    ms(s.p90),
    ms(s.p99),
    ms(s.max),
    ms(s.mean),
  ];
  const c2rRows = all.flatMap((f) =>
    f.mode === 'polling'
      ? [c2rRow(f, 'all', f.c2r), c2rRow(f, `first ${STREAMS} submitted (status streams)`, f.c2rStreamed), c2rRow(f, '**the rest (overflow: paced polls)**', f.c2rOverflow)]
      : [c2rRow(f, 'all (callback)', f.c2r)],
  );
  const runRows = all.map((f) => [
    f.mode,
    `${f.ok}/${f.jobs}`,
    f.errors.size ? `**${[...f.errors.values()].reduce((a, b) => a + b, 0)}**` : '0',
    `${f.rampS.toFixed(0)} s: ${fixed(f.rampCpuMsPerJob, 1)} ms/job, ${Math.round(f.rampUtil * 100)}%`,
    f.latencyS.toFixed(0),
    `${f.releaseS.toFixed(0)} s: ${fixed(f.releaseCpuMsPerJob, 1)} ms/job, ${Math.round(f.releaseUtil * 100)}%`,
    f.c2rTenths.map((v) => (v >= 1000 ? `${(v / 1000).toFixed(1)}s` : `${v.toFixed(0)}ms`)).join(' '),
  ]);
  const hookLines = all.flatMap((f) =>
    f.webhooks
      ? [
          `Webhook callbacks: the service received ${f.webhooks.received} for ${f.jobs} jobs (${f.webhooks.answeredOk} answered 200, ${f.webhooks.callerGone} after the emulator had given up on them: 499). ` +
            `The emulator's delivery log${f.webhooks.logCapped ? ' (its last 10,000 attempts only)' : ''}: ${f.webhooks.attempts} attempts, ${f.webhooks.failed} failed` +
            `${f.webhooks.firstFailure ? ` (first: ${f.webhooks.firstFailure}; an attempt times out after 15 s, as fal's do)` : ''}, ${f.webhooks.retried} jobs retried; ` +
            `job COMPLETED → first delivery attempt p50 ${ms(f.webhooks.completionToFirstAttempt.p50)} ms, p99 ${ms(f.webhooks.completionToFirstAttempt.p99)} ms.`,
        ]
      : [],
  );
  const errorLines = all.flatMap((f) => [...f.errors].map(([k, n]) => `- ${f.mode}: ${n} × ${k}`));
  return [
    `Run: \`npx tsx bench/waiting.ts${args.quick ? ' --quick' : ''}\` on ${startedAt.toISOString().slice(0, 10)} (${Math.round(seconds)} s).`,
    '',
    machineLine(machine, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: emulator and service as separate processes on 127.0.0.1, emulator in **cheap** image mode; **${JOBS.toLocaleString('en')} jobs** in flight at once on one service process ` +
      `(\`MAX_IN_FLIGHT=${JOBS + 1000}\`, \`REQUEST_TIMEOUT_MS=${REQUEST_TIMEOUT_MS}\`, \`DEFAULT_RPM_LIMIT=0\`, otherwise defaults: 256 status streams, 200 polls/s, 128 short connections to fal, info access logs). ` +
      `SQLite ledger on ${args.ledger === 'tmpfs' ? '/dev/shm (fsync is free there: the ramp is then bounded by CPU, not by the disk; the ledger holds nothing in the process per waiting job either way)' : 'os.tmpdir()'}. ` +
      `Each request is its own keep-alive connection from this process (node:http). Jobs are held by the emulator's \`never_finish\` fault until the plateau has been measured (${PLATEAU_S} s), ` +
      `then released each at its submit time + L, i.e. a fixed job latency of L (column *L*). Webhook mode: \`FAL_WEBHOOKS=true\`, \`PUBLIC_BASE_URL\` = the service's own loopback URL, ` +
      `callbacks signed by the emulator and verified against its JWKS, \`FAL_WEBHOOK_GRACE_MS\` raised to the request deadline (see below).`,
    '',
    '**Memory per waiting job** (VmRSS of the service process; idle = after warm-up, plateau = median over the plateau; target < 20 KB, read strictly as 20,000 bytes = 19.5 KiB)',
    '',
    table(['mode', 'jobs in flight', 'idle RSS', 'plateau RSS', 'per job', 'target', 'V8 heap used per job', 'V8 heap committed per job', 'peak RSS (VmHWM)', 'service CPU at plateau'], memRows),
    '',
    '**Upstream status traffic** (emulator\'s own call counts; status = polls, streams = SSE status streams opened)',
    '',
    table(['mode', 'plateau status / streams', 'plateau req per job-second', 'polls per second at plateau', 'whole run status / streams', 'whole run req per job-second'], trafficRows),
    '',
    'Job-seconds of the whole run = Σ over jobs of (submit → answer). A status stream is one request held open for the job\'s life (a keep-alive event every 10 s), counted once.',
    '',
    `**Sockets of the service process at plateau** (from /proc/<pid>/fd joined with /proc/net/tcp)`,
    '',
    table(['mode', 'open fds', 'inbound (callers)', 'to fal (emulator)', 'other'], sockRows),
    '',
    '**Completion-to-response** (emulator marks the job COMPLETED → the client holds the full answer; ms)',
    '',
    table(['mode', 'jobs', 'n', 'p50', 'p90', 'p99', 'max', 'mean'], c2rRows),
    '',
    table(['mode', 'answered 200', 'errors', 'ramp: s, service CPU per job, CPU', 'L s (job latency as released)', 'release → last answer: s, CPU per job, CPU', 'c2r p50 by tenth of jobs, in order of completion'], runRows),
    '',
    'CPU: the service process, per job and as a share of one core. The ramp is paced by the service (at most 64 requests between sent and submitted), ' +
      'and jobs are released with the same spacing, so completions arrive as fast as the service accepted the submits.',
    ...(hookLines.length ? ['', ...hookLines] : []),
    ...(errorLines.length ? ['', '**Errors**', '', ...errorLines] : ['', 'Errors: none.']),
    ...diag.flatMap((f) => {
      if (f.mode === 'webhook-default-grace') {
        return [
          '',
          `**Webhook mode with the default \`FAL_WEBHOOK_GRACE_MS\` (30 s)** (diagnostic pass: ${f.jobs} jobs, each answered ${f.latencyS.toFixed(0)} s after its submit): ` +
            `${f.totalStatus} status polls, **${fixed((f.totalStatus + f.totalStreams) / f.jobSeconds, 4)} requests per job-second** (0 with the grace raised, above), ` +
            `with every callback still delivered (${f.webhooks?.failed ?? 0} failed deliveries). The grace is counted from the submit (src/fal/gateway.ts, \`waitForCompletion\`), ` +
            'not from when the job could be expected to finish, so every job that takes longer than 30 s, queue included, is polled although its callback is on its way.',
        ];
      }
      if (!f.heap) return [];
      const { idle, plateau } = f.heap;
      const growth = perJobGrowth(idle.summary, plateau.summary, f.jobs, Number.MAX_SAFE_INTEGER);
      const row = (r: (typeof growth)[number]) => [r.key.replace(/\|/g, '\\|'), fixed(r.countPerJob, 1), fmtBytes(r.bytesPerJob)];
      const kinds = growth.slice(0, 10).map(row);
      // Objects with a constructor name say which code keeps them; V8's own kinds ("(array)", "(closure)") do not.
      const named = growth
        .filter((r) => !r.key.startsWith('(') && !r.key.startsWith('system /') && !['Object', 'Array'].includes(r.key) && r.countPerJob >= 0.9)
        .sort((x, y) => y.bytesPerJob - x.bytesPerJob)
        .slice(0, 25)
        .map(row);
      return [
        '',
        `**Where a waiting job's memory goes, ${f.mode} mode** (diagnostic pass: ${f.jobs} jobs; V8 heap snapshots of the service, each taken after a full collection, idle and at plateau: ` +
          `live heap ${mib(idle.totalSize)} → ${mib(plateau.totalSize)}, **${kib((plateau.totalSize - idle.totalSize) / f.jobs)} of live V8 heap per waiting job**. ` +
          'What RSS adds beyond that is garbage not yet collected and memory outside the V8 heap (sockets, HTTP parsers, buffers).)',
        '',
        'By kind (top 10):',
        '',
        table(['kind (V8)', 'count per job', 'bytes per job'], kinds),
        '',
        'Objects with a constructor name, at least ~1 per job (top 25 by bytes):',
        '',
        table(['constructor', 'count per job', 'bytes per job'], named),
      ];
    }),
  ].join('\n');
}

function fmtBytes(b: number): string {
  return Math.abs(b) >= 1024 ? kib(b) : `${b.toFixed(0)} B`;
}

const INTRO = `\`\`\`sh
npx tsx bench/waiting.ts            # 10,000 jobs, polling then webhook mode, then the diagnostic pass; 15–40 minutes on 2 vCPUs
npx tsx bench/waiting.ts --quick    # 2,000 jobs
\`\`\`

Issue 6: 10,000 jobs waiting at once on one process. Reported: memory per waiting job (RSS at plateau
− RSS idle, ÷ jobs), upstream status traffic in requests per job-second, the sockets the process holds
(callers vs. fal), and completion-to-response, where jobs beyond the 256 status streams wait for a paced
poll. A diagnostic pass then repeats each mode with 1,000 jobs and V8 heap snapshots of the service (idle and at
plateau) to show what a waiting job keeps alive, and runs webhook mode once with the default
\`FAL_WEBHOOK_GRACE_MS\`; \`--no-diagnostics\` skips it.`;

async function main(): Promise<void> {
  const machine = describeMachine();
  const startedAt = new Date();
  const dir = await tempDir('gw-wait-');
  // Short jobs for the warm-up; the measured jobs are held by a fault instead.
  const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: '200', EMULATOR_IMAGE_MODE: 'cheap', EMULATOR_CONCURRENCY: BENCH_FAL_CONCURRENCY });
  const all: ModeFigures[] = [];
  const diag: ModeFigures[] = [];
  try {
    if (!args['diagnostics-only']) for (const m of modes) all.push(await runMode(m, emu, dir.path, JOBS, PLATEAU_S));
    if (diagnostics) {
      const snaps = await tempDir('gw-wait-heap-');
      try {
        for (const m of modes) diag.push(await runMode(m, emu, dir.path, DIAG_JOBS, 5, snaps.path));
        if (modes.includes('webhook') && !args['diagnostics-only']) // Held past the 30 s grace: the plateau alone outlasts it.
        diag.push(await runMode('webhook-default-grace', emu, dir.path, DIAG_JOBS, 40));
      } finally {
        await snaps.remove();
      }
    }
  } finally {
    await emu.stop();
    if (process.env.BENCH_KEEP) log(`logs kept in ${dir.path}`);
    else await dir.remove();
  }
  const text = render(all, diag, startedAt, machine, (Date.now() - startedAt.getTime()) / 1000);
  process.stdout.write(`\n${text}\n`);
  if (!args['no-write']) {
    await writeSection('waiting', 'Many waiting jobs (issue 6)', INTRO, text);
    log('wrote bench/README.md');
  }
}

await main();
