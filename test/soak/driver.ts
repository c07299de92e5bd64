/**
 * The fault soak, shared by test/soak/fault-soak.test.ts and
 * bench/fault-soak.ts: a standalone emulator process on its real-fal
 * defaults (so a SIGKILL of the service leaves fal's side intact), the
 * service as a child process on SQLite or PostgreSQL, keys with budgets, the
 * seeded workload of scenarios.ts at concurrency, one SIGKILL of the service
 * mid-load and a restart on the same database; then, once every fal job is
 * final and the service has reconciled what it left open, the billing audit
 * (test/helpers/billing-audit.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmulatorProcess, startServiceProcess, tail, type NodeChild } from '../../bench/lib/procs.js';
import type { Database, DatabaseDialect } from '../../src/db/index.js';
import { auditLedger, readLedger, type AuditReport, type BilledJob, type CallerAnswer } from '../helpers/billing-audit.js';
import { createStorage, serviceEnv, type TestStorage } from '../helpers/databases.js';
import { planSoak, type SoakRequest } from './scenarios.js';
import { CLOCK_SKEW_MS, SUBMIT_TIMEOUT_MS } from '../../src/metering/lost-submits.js';
import { runLoad, type Answer, type Target } from './load.js';
import { createFalClient } from '@fal-ai/client';
import { createRedirectFetch } from '../../src/fal/redirect-fetch.js';
import { inputPng } from '../helpers/edit-images.js';

/** The edits' input image, stored on the emulator's CDN as fal's storage would hold it. */
async function uploadEditImage(emulatorUrl: string): Promise<string> {
  const fal = createFalClient({ credentials: 'soak-fal-key', fetch: createRedirectFetch({ baseUrl: emulatorUrl }) });
  return fal.storage.upload(new Blob([await inputPng(512, 384)], { type: 'image/png' }));
}

export interface SoakOptions {
  dialect: DatabaseDialect;
  seed: number;
  requests: number;
  concurrency: number;
  /** USD budgets, one key each; the small ones run out during the load. */
  budgets: readonly string[];
  /** The service is SIGKILLed when this fraction of the requests has been sent (and restarted); undefined = no kill. */
  killAt?: number | undefined;
  requestTimeoutMs?: number;
  /** Emulated queue + inference time of an ordinary job. */
  emulatorLatencyMs?: number;
  /** Bound on waiting for fal's jobs to end and the ledger to close what it holds. */
  settleDeadlineMs?: number;
  log?: (line: string) => void;
}

export interface SoakResult {
  seed: number;
  plan: SoakRequest[];
  answers: Answer[];
  audit: AuditReport;
  /** Request id or fal id → `#index scenario`, for the audit's report. */
  label: (id: string) => string | undefined;
  /** Drift kind → scenario name → count. */
  driftByScenario: Map<string, Map<string, number>>;
  statuses: Map<string, number>;
  emulatorJobs: number;
  /** Whether fal's jobs all ended and the ledger closed its holds within the deadline. */
  settled: { jobsFinal: boolean; holdsClosed: boolean };
  inFlightAtKill: number | undefined;
  timings: { loadMs: number; settleMs: number; totalMs: number };
}

export const ADMIN_KEY = 'sk-admin-soak-0123456789abcdef';

interface EmulatorJob {
  request_id: string;
  status: string;
  never_finish?: boolean;
  input: { prompt?: unknown };
}

async function json<T>(url: string, init: RequestInit = {}): Promise<T> {
  const res = await fetch(url, init);
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

const emulatorJobs = (emu: string) => json<{ jobs: EmulatorJob[] }>(`${emu}/_emulator/jobs`).then((r) => r.jobs);
const billing = (emu: string) => json<{ entries: BilledJob[] }>(`${emu}/_emulator/billing`).then((r) => r.entries);

/** Polls `check` until it holds (true), it says no change can come ('stuck': false) or the deadline passes (false). */
async function until(deadline: number, check: () => Promise<boolean | 'stuck'>, pollMs = 250): Promise<boolean> {
  for (;;) {
    const v = await check();
    if (v === true) return true;
    if (v === 'stuck' || Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

const TOKEN = /\[soak-\d+-(\d{5})\]/;

/** Fal's side of never_finish: the job ends when fal's own limit would end it, here once its caller has an answer. */
async function finishNeverFinishing(emu: string, tokens?: ReadonlySet<string>): Promise<void> {
  for (const j of await emulatorJobs(emu)) {
    if (!j.never_finish || j.status === 'COMPLETED') continue;
    const token = TOKEN.exec(String(j.input.prompt ?? ''))?.[0];
    if (tokens && (!token || !tokens.has(token))) continue;
    await fetch(`${emu}/_emulator/jobs/${j.request_id}/finish`, { method: 'POST' }).then((r) => r.arrayBuffer());
  }
}

async function createKeys(url: string, budgets: readonly string[]): Promise<string[]> {
  const keys: string[] = [];
  for (const [i, budget] of budgets.entries()) {
    const created = await json<{ key: string }>(`${url}/v1/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: `soak-${i}`, budget_usd: budget }),
    });
    keys.push(created.key);
  }
  return keys;
}

/** The processes of one soak: a standalone emulator, the database, and the service (restartable on the same database). */
interface Rig {
  emulatorUrl: string;
  storage: TestStorage;
  serviceUrl(): string;
  /** SIGKILL the service, then start it again on the same database. */
  killAndRestart(): Promise<void>;
}

async function startRig(o: SoakOptions, logDir: string, children: NodeChild[], timing: { requestTimeoutMs: number; reconcileAfterMs: number }, onStorage: (s: TestStorage) => void): Promise<Rig> {
  const emulator = await startEmulatorProcess(logDir, {
    EMULATOR_LATENCY_MS: String(o.emulatorLatencyMs ?? 600),
    // One cached image per size: the soak is about money, and rendering would eat the shared CPUs.
    EMULATOR_IMAGE_MODE: 'cheap',
  });
  children.push(emulator);
  const storage = await createStorage(o.dialect);
  onStorage(storage);
  const dbEnv = o.dialect === 'sqlite' ? { DATA_DIR: storage.options.dataDir } : { ...(await serviceEnv(storage)), DATA_DIR: logDir };
  const env = {
    ...dbEnv,
    FAL_BASE_URL: emulator.url,
    FAL_KEY: 'soak-fal-key',
    ADMIN_API_KEY: ADMIN_KEY,
    REQUEST_TIMEOUT_MS: String(timing.requestTimeoutMs),
    RECONCILE_AFTER_MS: String(timing.reconcileAfterMs),
    RECONCILE_INTERVAL_MS: '1000',
    DEFAULT_RPM_LIMIT: '0',
    SHUTDOWN_GRACE_MS: '1000',
    LOG_LEVEL: 'info',
    // Edits name an image on the emulator's CDN (loopback): trusted as it is.
    EDIT_IMAGE_HOSTS_ALLOWED: '127.0.0.1',
  };
  let generation = 0;
  const start = async () => {
    const child = await startServiceProcess(logDir, env, `service-${++generation}`);
    children.push(child);
    return child;
  };
  let service = await start();
  return {
    emulatorUrl: emulator.url,
    storage,
    serviceUrl: () => service.url,
    async killAndRestart() {
      process.kill(service.pid, 'SIGKILL');
      await service.exited;
      service = await start();
    },
  };
}

/**
 * Waits for fal's side to end (every never_finish job released first), then
 * for the service to close every request it holds. A request is reconciled
 * once it is older than RECONCILE_AFTER_MS and fal has ended its jobs; past
 * that and a few rounds (one a second), a hold still open is one the service
 * will not close, and waiting longer proves nothing.
 */
/** A lost submit's window (src/metering/lost-submits.ts): the submit timeout and the clock skew after its row. */
const LOST_SUBMIT_WINDOW_MS = SUBMIT_TIMEOUT_MS + CLOCK_SKEW_MS;

async function settle(emulatorUrl: string, database: Database, answers: readonly Answer[], reconcileAfterMs: number, deadline: number) {
  await finishNeverFinishing(emulatorUrl);
  const jobsFinal = await until(deadline, async () => (await emulatorJobs(emulatorUrl)).every((j) => j.status === 'COMPLETED'));
  const jobsFinalAt = Date.now();
  const sentAt = new Map(answers.map((a) => [a.requestId, a.sentAt]));
  // Open jobs fal named (their request may already be closed) are reconciled for their cost on the same rounds.
  const holdsClosed = await until(deadline, async () => {
    const ledger = await readLedger(database.db);
    // Rows are keyed by our ids; the plan knows each request by the x-request-id label it sent.
    const labelOf = new Map(ledger.requests.map((r) => [r.id, r.clientRequestId ?? r.id]));
    const sentOf = (id: string) => sentAt.get(labelOf.get(id) ?? id);
    const holding = ledger.requests.filter((r) => r.holding);
    const openJobs = ledger.jobs.filter((j) => !j.final && j.falIds.length > 0);
    // A submit whose answer was lost is looked for in fal's listing; it is released only once its window has closed.
    const lostSubmits = ledger.jobs.filter((j) => !j.final && j.falIds.length === 0);
    if (holding.length === 0 && openJobs.length === 0 && lostSubmits.length === 0) return true;
    const waiting = [...holding.map((r) => r.id), ...openJobs.map((j) => j.requestId)];
    const lostWindowEnd = lostSubmits.map((j) => (sentOf(j.requestId) ?? jobsFinalAt) + Math.max(reconcileAfterMs, LOST_SUBMIT_WINDOW_MS));
    const latest = Math.max(jobsFinalAt, ...waiting.map((id) => (sentOf(id) ?? jobsFinalAt) + reconcileAfterMs), ...lostWindowEnd);
    return Date.now() > latest + 8_000 ? 'stuck' : false;
  }, 500);
  return { jobsFinal, holdsClosed };
}

export async function runFaultSoak(o: SoakOptions): Promise<SoakResult> {
  const log = o.log ?? (() => {});
  const requestTimeoutMs = o.requestTimeoutMs ?? 6000;
  // After the deadline, a cancel's confirmation (2 s) and a margin: no live request is reconciled under its process.
  const reconcileAfterMs = requestTimeoutMs + 5000;
  const started = Date.now();
  const plan = planSoak({ seed: o.seed, requests: o.requests, keys: o.budgets.length, requestTimeoutMs });
  const logDir = await mkdtemp(join(tmpdir(), 'gw-soak-'));
  const children: NodeChild[] = [];
  let storage: TestStorage | undefined;
  try {
    const rig = await startRig(o, logDir, children, { requestTimeoutMs, reconcileAfterMs }, (s) => (storage = s));
    const keys = await createKeys(rig.serviceUrl(), o.budgets);
    log(`soak: seed ${o.seed}, ${o.requests} requests at concurrency ${o.concurrency}, ${o.dialect}, logs in ${logDir}`);
    const target: Target = {
      editImageUrl: await uploadEditImage(rig.emulatorUrl),
      url: rig.serviceUrl,
      keyFor: (r) => keys[r.keyIndex]!,
      arm: (faults) => json(`${rig.emulatorUrl}/_emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(faults) }).then(() => {}),
      answered: async (r) => {
        if (r.scenario.releaseNeverFinishing) await finishNeverFinishing(rig.emulatorUrl, new Set([r.token]));
      },
      kill: async () => {
        await rig.killAndRestart();
        log('soak: service SIGKILLed mid-load and restarted on the same database');
      },
    };
    const killIndex = o.killAt === undefined ? undefined : Math.floor(o.requests * o.killAt);
    const load = await runLoad(plan, target, { concurrency: o.concurrency, killIndex });
    const loadMs = Date.now() - started;
    log(`soak: load done in ${(loadMs / 1000).toFixed(1)} s`);

    const settleStart = Date.now();
    const database = await rig.storage.open();
    const settled = await settle(rig.emulatorUrl, database, load.answers, reconcileAfterMs, settleStart + (o.settleDeadlineMs ?? 90_000));
    const settleMs = Date.now() - settleStart;
    log(`soak: settled in ${(settleMs / 1000).toFixed(1)} s (fal jobs final: ${settled.jobsFinal}, holds closed: ${settled.holdsClosed})`);

    const [jobs, bill] = await Promise.all([emulatorJobs(rig.emulatorUrl), billing(rig.emulatorUrl)]);
    const answers: CallerAnswer[] = load.answers.map((a) => ({ requestId: a.requestId, status: a.status, costUsd: a.costUsd }));
    const audit = await auditLedger(database.db, { billing: bill, jobIds: new Set(jobs.map((j) => j.request_id)) }, answers);
    const label = labeller(plan, jobs);
    return {
      seed: o.seed,
      plan,
      answers: load.answers,
      audit,
      label,
      driftByScenario: driftByScenario(audit, label),
      statuses: histogram(load.answers),
      emulatorJobs: jobs.length,
      settled,
      inFlightAtKill: load.inFlightAtKill,
      timings: { loadMs, settleMs, totalMs: Date.now() - started },
    };
  } catch (err) {
    for (const c of children) log(`--- ${c.name} log tail ---\n${tail(c.logFile, 30)}`);
    throw err;
  } finally {
    for (const c of children.reverse()) await c.stop(2000);
    await storage?.destroy();
    // SOAK_KEEP_LOGS=1 keeps the processes' logs for a post-mortem of a drift.
    if (process.env.SOAK_KEEP_LOGS) log(`soak: logs kept in ${logDir}`);
    else await rm(logDir, { recursive: true, force: true });
  }
}

/** `#index scenario` for our request ids and for every fal job (through the token in its prompt). */
function labeller(plan: readonly SoakRequest[], jobs: readonly EmulatorJob[]): (id: string) => string | undefined {
  const names = new Map<string, string>();
  for (const r of plan) names.set(r.requestId, `#${r.index} ${r.scenario.name} n=${String(r.body.n)}`);
  for (const j of jobs) {
    const m = TOKEN.exec(String(j.input.prompt ?? ''));
    const r = m ? plan[Number(m[1])] : undefined;
    if (r) names.set(j.request_id, names.get(r.requestId)!);
  }
  return (id) => names.get(id);
}

function driftByScenario(audit: AuditReport, label: (id: string) => string | undefined): Map<string, Map<string, number>> {
  const out = new Map<string, Map<string, number>>();
  for (const d of [...audit.jobs, ...audit.requests, ...audit.keys]) {
    const id = 'requestId' in d ? d.requestId : 'falId' in d ? d.falId : d.keyId;
    const scenario = label(id)?.split(' ')[1] ?? ('keyId' in d && !('requestId' in d) ? 'key' : 'unknown');
    const byScenario = out.get(d.kind) ?? new Map<string, number>();
    byScenario.set(scenario, (byScenario.get(scenario) ?? 0) + 1);
    out.set(d.kind, byScenario);
  }
  return out;
}

function histogram(answers: readonly Answer[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const a of answers) {
    const k = a.status === null ? (a.outcome === 'aborted' ? 'left early' : 'no answer (killed)') : String(a.status);
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}
