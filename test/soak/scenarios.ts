/**
 * The fault soak's workload: a seeded, deterministic list of caller requests,
 * each with what fal will do to it. Every request carries a unique token in
 * its prompt and arms its emulator faults with `prompt_contains` on that
 * token, so faults never leak from one request to another and every fal job
 * can be traced back to its request and scenario. Pure: no I/O here.
 *
 * The mix covers every fault kind of src/emulator/faults.ts: each call kind on
 * each phase the gateway calls (submit, status, stream, result, cancel), the
 * committed variants of submit (the job exists, the answer is lost), every
 * job kind, callers who leave early, and jobs outliving the gateway's
 * deadline; the rest run clean on the emulator's real-fal defaults.
 */
import { JOB_KINDS, type FaultSpec } from '../../src/emulator/faults.js';
import { mulberry32 } from '../fuzz/generator.js';

export interface Scenario {
  /** `family:detail`, e.g. `submit:http_error:503:commit`; the report counts drift by it. */
  name: string;
  /** Armed before the request is sent; `prompt_contains` is added by the plan. */
  faults: FaultSpec[];
  /** The caller aborts its request this long after sending it. */
  abortAfterMs?: number;
  /** The job never finishes by itself: the driver finishes it (fal's own timeout, in effect) once the caller has its answer. */
  releaseNeverFinishing?: boolean;
}

export interface SoakRequest {
  index: number;
  /** Sent as `x-request-id`: the ledger's request id, known even when no answer comes. */
  requestId: string;
  /** Unique in the whole run, and no token is a substring of another. */
  token: string;
  keyIndex: number;
  body: Record<string, unknown>;
  scenario: Scenario;
}

export interface PlanOptions {
  seed: number;
  requests: number;
  keys: number;
  /** The service's REQUEST_TIMEOUT_MS: the deadline scenario runs its job longer than this. */
  requestTimeoutMs: number;
}

type Rng = () => number;
const pick = <T>(rng: Rng, list: readonly T[]): T => list[Math.floor(rng() * list.length)]!;
const between = (rng: Rng, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));

/** fal's job-level faults hit one job, or (`all`) every job of a fanned-out request. */
const times = (rng: Rng): number => (rng() < 0.3 ? 10 : 1);

const SUBMIT_STATUSES = [400, 401, 403, 404, 422, 429, 500, 502, 503, 504];
const LATER_STATUSES = [400, 403, 404, 429, 500, 502, 503, 504];
const COMMIT_STATUSES = [429, 500, 502, 503, 504];

/** A scenario family: its weight in the random part of the mix and how to draw one. */
interface Family {
  weight: number;
  draw(rng: Rng, o: PlanOptions): Scenario;
}

type CallPhase = 'submit' | 'status' | 'stream' | 'result';
const CALL_VARIANTS = ['http_error', 'reset', 'non_json', 'delay'] as const;
type CallVariant = (typeof CALL_VARIANTS)[number];

function callScenario(rng: Rng, phase: CallPhase, kind: CallVariant, commit: boolean): Scenario {
  const suffix = commit ? ':commit' : '';
  const committed = commit ? { commit } : {};
  switch (kind) {
    case 'http_error': {
      const status = pick(rng, commit ? COMMIT_STATUSES : phase === 'submit' ? SUBMIT_STATUSES : LATER_STATUSES);
      return { name: `${phase}:http_error:${status}${suffix}`, faults: [{ phase, kind, status, ...committed }] };
    }
    case 'non_json': {
      const status = pick(rng, [200, 502]);
      return { name: `${phase}:non_json:${status}${suffix}`, faults: [{ phase, kind, status, ...committed }] };
    }
    case 'reset':
      return { name: `${phase}:reset${suffix}`, faults: [{ phase, kind, ...committed }] };
    case 'delay':
      return { name: `${phase}:delay`, faults: [{ phase, kind, delay_ms: between(rng, 500, 2500) }] };
  }
}

function callFamily(phase: CallPhase): Family {
  return {
    weight: phase === 'submit' ? 10 : 5,
    draw(rng) {
      const kind = pick(rng, ['http_error', 'http_error', 'reset', 'non_json', 'delay'] as const);
      return callScenario(rng, phase, kind, phase === 'submit' && kind !== 'delay' && rng() < 0.4);
    },
  };
}

const CANCEL_VARIANTS = ['none', 'http_error', 'reset', 'non_json', 'rejected', 'ignored', 'delay'] as const;

/** The caller leaves while the job runs, so the gateway cancels, and fal answers the cancel badly (or not at all). */
function cancelScenario(rng: Rng, which: (typeof CANCEL_VARIANTS)[number]): Scenario {
  const latency: FaultSpec = { kind: 'latency', latency_ms: between(rng, 2500, 4000), queue_ms: 200, times: 10 };
  const abortAfterMs = between(rng, 700, 1500);
  if (which === 'none') return { name: 'cancel:plain', faults: [latency], abortAfterMs };
  if (which === 'rejected' || which === 'ignored') {
    return { name: `cancel:cancel_refused:${which}`, faults: [latency, { phase: 'cancel', kind: 'cancel_refused', mode: which }], abortAfterMs };
  }
  if (which === 'http_error') {
    const status = pick(rng, [500, 503, 404]);
    return { name: `cancel:http_error:${status}`, faults: [latency, { phase: 'cancel', kind: which, status }], abortAfterMs };
  }
  const fault: FaultSpec = which === 'delay' ? { phase: 'cancel', kind: which, delay_ms: 3000 } : { phase: 'cancel', kind: which };
  return { name: `cancel:${which}`, faults: [latency, fault], abortAfterMs };
}

const cancelFamily: Family = { weight: 6, draw: (rng) => cancelScenario(rng, pick(rng, CANCEL_VARIANTS)) };

type JobKind = (typeof JOB_KINDS)[number];

/** The fault's extra fields (and a name detail) per job kind. */
function jobExtra(kind: JobKind, rng: Rng, o: PlanOptions): Partial<FaultSpec> & { detail?: string } {
  switch (kind) {
    case 'nsfw':
      return { nsfw_indexes: rng() < 0.5 ? [0] : [0, 1, 2, 3] };
    case 'fail_after_start': {
      const status = pick(rng, [500, 503, 422, 400]);
      return rng() < 0.3 ? { detail: `${status}:units`, status, billable_units: '1' } : { detail: String(status), status };
    }
    case 'latency':
      // Longer than the gateway's deadline: it cancels a running job, which runs on and bills.
      return { detail: 'past_deadline', latency_ms: o.requestTimeoutMs + 2500, queue_ms: 100 };
    default:
      return {};
  }
}

function jobScenario(rng: Rng, o: PlanOptions, kind: JobKind): Scenario {
  const { detail, ...extra } = jobExtra(kind, rng, o);
  const n = times(rng);
  return {
    name: `job:${kind}${detail ? `:${detail}` : ''}${n > 1 ? ':all' : ''}`,
    faults: [{ kind, times: n, ...extra }],
    ...(kind === 'never_finish' ? { releaseNeverFinishing: true } : {}),
  };
}

/** Job kinds the gateway never triggers (no webhooks; its inputs are already valid) get the least weight; armed so every kind is in the mix. */
const JOB_WEIGHT: Record<JobKind, number> = {
  never_finish: 2,
  nsfw: 2,
  fail_after_start: 5,
  latency: 3,
  ignore_sync_mode: 2,
  escape_slashes: 2,
  runner_retry: 3,
  omit_dimensions: 3,
  content_policy: 3,
  lora_download_failed: 2,
  webhook_payload_error: 1,
  submit_validation: 1,
};

const FAMILIES: Family[] = [
  { weight: 40, draw: () => ({ name: 'clean', faults: [] }) },
  { weight: 5, draw: (rng) => ({ name: 'abort:early', faults: [], abortAfterMs: between(rng, 20, 400) }) },
  callFamily('submit'),
  callFamily('status'),
  callFamily('stream'),
  callFamily('result'),
  cancelFamily,
  ...JOB_KINDS.map((kind) => ({ weight: JOB_WEIGHT[kind], draw: (rng: Rng, o: PlanOptions) => jobScenario(rng, o, kind) })),
];

/** One of each: every call kind on every phase (and submit's committed variants), every cancel answer, every job kind, an early abort. */
function roster(rng: Rng, o: PlanOptions): Scenario[] {
  const phases: CallPhase[] = ['submit', 'status', 'stream', 'result'];
  return [
    ...phases.flatMap((p) => CALL_VARIANTS.map((k) => callScenario(rng, p, k, false))),
    ...(['http_error', 'reset', 'non_json'] as const).map((k) => callScenario(rng, 'submit', k, true)),
    ...CANCEL_VARIANTS.map((w) => cancelScenario(rng, w)),
    ...JOB_KINDS.map((k) => jobScenario(rng, o, k)),
    { name: 'abort:early', faults: [], abortAfterMs: between(rng, 20, 400) },
  ];
}

/** Stands for the input image's URL in an edit's body; the driver puts the image on the emulator's CDN and substitutes it when sending. */
export const EDIT_IMAGE_URL = '{{soak-edit-image}}';

const MODELS = ['alibaba/z-image-turbo', 'alibaba/z-image-turbo', 'alibaba/z-image-turbo', 'flux/schnell'];
const SIZES = ['512x512', '1024x768', '1024x1024'];

/** n from 1 to 10: mostly one job, often several (above the per-job maximum of 4, the request fans out). */
function drawN(rng: Rng): number {
  const r = rng();
  if (r < 0.45) return 1;
  if (r < 0.7) return between(rng, 2, 4);
  return between(rng, 5, 10);
}

function drawScenario(rng: Rng, o: PlanOptions): Scenario {
  const total = FAMILIES.reduce((s, f) => s + f.weight, 0);
  let x = rng() * total;
  for (const f of FAMILIES) {
    x -= f.weight;
    if (x < 0) return f.draw(rng, o);
  }
  return FAMILIES[0]!.draw(rng, o);
}

export function planSoak(o: PlanOptions): SoakRequest[] {
  const rng = mulberry32(o.seed);
  const scenarios = roster(rng, o).slice(0, o.requests);
  while (scenarios.length < o.requests) scenarios.push(drawScenario(rng, o));
  // Fisher-Yates, seeded: the roster's cases spread over the run (some before the kill, some after).
  for (let i = scenarios.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [scenarios[i], scenarios[j]] = [scenarios[j]!, scenarios[i]!];
  }
  const out: SoakRequest[] = [];
  for (let index = 0; index < o.requests; index++) {
    const token = `[soak-${o.seed}-${String(index).padStart(5, '0')}]`;
    const scenario = scenarios[index]!;
    scenario.faults = scenario.faults.map((f) => ({ ...f, prompt_contains: token }));
    const model = pick(rng, MODELS);
    const body: Record<string, unknown> = {
      model,
      prompt: `a lighthouse in a storm ${token}`,
      n: drawN(rng),
      size: pick(rng, SIZES),
      response_format: rng() < 0.35 ? 'b64_json' : 'url',
    };
    if (model === 'alibaba/z-image-turbo' && rng() < 0.2) body.enable_prompt_expansion = true;
    // A quarter of Z-Image Turbo's requests are edits (image_url on a generation): fal's image-to-image endpoint, the same metering.
    if (model === 'alibaba/z-image-turbo' && rng() < 0.25) body.image_url = EDIT_IMAGE_URL;
    // ignore_sync_mode only shows with b64_json (sync_mode), so it always asks for it.
    if (scenario.name.startsWith('job:ignore_sync_mode')) body.response_format = 'b64_json';
    out.push({ index, requestId: `soak-${o.seed}-${String(index).padStart(5, '0')}`, token, keyIndex: Math.floor(rng() * o.keys), body, scenario });
  }
  return out;
}

/** Every fault kind and call phase the plan armed, so a test can show the mix is complete. */
export function coverage(plan: readonly SoakRequest[]): Set<string> {
  const seen = new Set<string>();
  for (const r of plan) {
    for (const f of r.scenario.faults) for (const p of [f.phase ?? ['job']].flat()) seen.add(`${f.kind}@${p}`);
    if (r.scenario.abortAfterMs !== undefined) seen.add('abort');
  }
  return seen;
}
