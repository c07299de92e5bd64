/**
 * Judges the probe's observations against the emulator's defaults (the
 * behaviours in behaviours.ts) and prices what the conversation cost, with
 * the emulator's own price table: units from fal's x-fal-billable-units,
 * USD from the endpoint's row.
 */
import { add, dec, decInt, decToString, isDecimalString, mul, type Dec } from '../../src/emulator/decimal.js';
import { ENDPOINTS } from '../../src/emulator/endpoints.js';
import { priceFailure, priceJob, type PriceEntry, type PriceTable } from '../../src/emulator/pricing.js';
import { PROBE_BEHAVIOURS, type BehaviourId } from './behaviours.js';
import type { Answer, JobObservation, Observations } from './conversation.js';

export type Verdict = 'MATCH' | 'DIFFERS' | 'NOT OBSERVED';

export interface BehaviourLine {
  id: BehaviourId;
  verdict: Verdict;
  /** What the fal that was probed did, short. */
  fal: string;
  emulator: string;
  docs: string;
}

export interface JobCost {
  role: string;
  request_id?: string;
  /** x-fal-billable-units of the job's result; null when fal sent none. */
  units: string | null;
  usd: string;
}

export interface Cost {
  endpoint: string;
  /** Where the rate comes from. */
  price_source: string;
  unit: string;
  usd_per_unit: string;
  jobs: JobCost[];
  total_units: string;
  total_usd: string;
  /** Header values that were not decimals (counted as 0, listed here). */
  unreadable: string[];
}

export interface Target {
  kind: 'emulator' | 'base-url' | 'fal';
  /** What was probed, for people: `fal.ai`, or the base URL. */
  url: string;
}

export interface ProbeReport {
  target: Target;
  endpoint: string;
  started_at: string;
  finished_at: string;
  lines: BehaviourLine[];
  cost: Cost;
  problems: string[];
  summary: Record<Verdict, number>;
  /** 0: nothing DIFFERS; 1: something DIFFERS; 2: the probe could not finish. */
  exit_code: 0 | 1 | 2;
  observations: Observations;
}

const PROBE_SIZE = { width: 512, height: 512 };

function priceKeyOf(endpoint: string): string {
  return ENDPOINTS.find((e) => e.id === endpoint)?.priceKey ?? endpoint;
}

/** The emulator's expectations that come from its price table. */
export function expectedUnits(prices: PriceTable, endpoint: string): { image: string; error: string } {
  const key = priceKeyOf(endpoint);
  return {
    image: priceJob(prices, key, { images: [PROBE_SIZE], promptExpansion: false }).units,
    error: priceFailure(prices, key).units,
  };
}

const sameDecimal = (a: string | null | undefined, b: string): boolean =>
  typeof a === 'string' && isDecimalString(a) && decToString(dec(a)) === decToString(dec(b));

const shortBody = (body: unknown, max = 140): string => {
  if (body === undefined) return '';
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
};

function describe(a: Answer | undefined): string {
  if (!a) return 'no answer';
  if (a.status === undefined) return a.error ?? 'no answer';
  const h = a.headers;
  const hints = [
    h['x-fal-error-type'] !== undefined ? `X-Fal-Error-Type ${h['x-fal-error-type']}` : '',
    h['x-fal-retryable'] !== undefined ? `X-Fal-Retryable ${h['x-fal-retryable']}` : '',
    h['x-fal-request-timeout-type'] !== undefined ? `X-Fal-Request-Timeout-Type ${h['x-fal-request-timeout-type']}` : '',
  ].filter(Boolean);
  return [String(a.status), hints.join(', '), shortBody(a.body, 100)].filter(Boolean).join(' ');
}

const units = (j: JobObservation) => (j.billable_units === undefined ? 'no result' : j.billable_units === null ? 'no x-fal-billable-units' : `units ${j.billable_units}`);
const billed = (j: JobObservation) => typeof j.billable_units === 'string' && isDecimalString(j.billable_units) && dec(j.billable_units).coef !== 0n;

type Judged = { verdict: Verdict; fal: string };
const match = (fal: string): Judged => ({ verdict: 'MATCH', fal });
const differs = (fal: string): Judged => ({ verdict: 'DIFFERS', fal });
const unseen = (fal: string): Judged => ({ verdict: 'NOT OBSERVED', fal });

function job(obs: Observations, role: JobObservation['role']): JobObservation | undefined {
  return obs.jobs.find((j) => j.role === role);
}

/** The image job completed with a 200 result. */
const imageDone = (j: JobObservation | undefined): j is JobObservation => j?.result?.status === 200;

function judgeAll(obs: Observations, prices: PriceTable): Record<BehaviourId, Judged> {
  const want = expectedUnits(prices, obs.endpoint);
  const image = job(obs, 'image');
  const invalid = job(obs, 'invalid');
  const queued = job(obs, 'cancel_queued');
  const running = job(obs, 'cancel_running');
  const notDone = (j: JobObservation | undefined, what: string) =>
    unseen(`${what}: ${!j ? 'not run' : j.request_id === undefined ? `submit answered ${describe(j.submit)}` : j.timed_out ? 'the job did not complete in time' : j.status_error ? `status answered ${describe(j.status_error)}` : `result ${describe(j.result)}`}`);

  const out = {} as Record<BehaviourId, Judged>;

  // --- the cheap image ---
  if (imageDone(image)) {
    const im = (image.output as { images?: Array<Record<string, unknown>> } | undefined)?.images?.[0];
    const w = im?.width;
    const h = im?.height;
    out.output_dimensions =
      typeof w === 'number' && typeof h === 'number'
        ? match(`images[0] is ${w}x${h}`)
        : differs(`images[0] has ${im ? `no ${[typeof w === 'number' ? '' : 'width', typeof h === 'number' ? '' : 'height'].filter(Boolean).join(' or ')}` : 'no image at all'}`);
    out.billable_units = sameDecimal(image.billable_units, want.image)
      ? match(`x-fal-billable-units ${image.billable_units}`)
      : differs(image.billable_units === null ? 'no x-fal-billable-units on the result' : `x-fal-billable-units ${image.billable_units}`);
    out.result_request_id =
      image.result_request_id === image.request_id
        ? match('the same id')
        : differs(`submit said ${image.request_id}, the result ${image.result_request_id || 'nothing'}`);
    const d = image.download;
    out.output_url_downloads = !d
      ? differs('no image URL in the output')
      : d.status === 200 && (d.content_type ?? '').startsWith('image/')
        ? match(`200 ${d.content_type}, ${d.bytes} bytes`)
        : differs(d.error ?? `${d.status} ${d.content_type ?? ''}`.trim());
  } else {
    for (const id of ['output_dimensions', 'billable_units', 'result_request_id', 'output_url_downloads'] as const) out[id] = notDone(image, 'the image job');
  }

  // --- the start deadline (sent with the image job) ---
  if (!image || image.start_timeout_sent === undefined) {
    out.start_timeout_accepted = differs('the client sent no x-fal-request-timeout');
    out.start_timeout_expiry = unseen('not sent');
  } else {
    const sent = `x-fal-request-timeout: ${image.start_timeout_sent}`;
    const expired = image.result?.status === 504 && image.result.headers['x-fal-request-timeout-type'] === 'user';
    if (image.submit.status !== 200) out.start_timeout_accepted = differs(`${sent}; submit answered ${describe(image.submit)}`);
    else if (imageDone(image)) out.start_timeout_accepted = match(`${sent}; submit 200; the job started in time and ran`);
    else if (expired) out.start_timeout_accepted = match(`${sent}; submit 200; the deadline expired (see start_timeout_expiry)`);
    else out.start_timeout_accepted = notDone(image, `${sent}; submit 200, but the image job`);
    if (expired) {
      const r = image.result!;
      const ok = r.headers['x-fal-error-type'] === 'request_timeout' && r.headers['x-fal-retryable'] === 'false' && !billed(image);
      out.start_timeout_expiry = (ok ? match : differs)(`${describe(r)}; ${units(image)}`);
    } else if (image.result?.status === 504) {
      out.start_timeout_expiry = differs(`504 without X-Fal-Request-Timeout-Type: user: ${describe(image.result)}`);
    } else {
      out.start_timeout_expiry = unseen('the job started before its deadline; fal cannot be made to miss one cheaply');
    }
  }

  // --- the invalid input ---
  const failedAnswer = invalid?.request_id === undefined ? invalid?.submit : invalid.result;
  if (!invalid) {
    for (const id of ['validation_after_queueing', 'failed_job_status', 'model_error_hints', 'billed_failure'] as const) out[id] = unseen('not run');
  } else if (invalid.request_id === undefined) {
    const s = invalid.submit;
    out.validation_after_queueing = s.status === 422 ? differs(`submit refused it at once: ${describe(s)}`) : unseen(`submit answered ${describe(s)}`);
    out.failed_job_status = unseen('no job (refused at submit)');
    out.billed_failure = unseen(`no job (refused at submit); the refusal carried ${s.headers['x-fal-billable-units'] === undefined ? 'no x-fal-billable-units' : `x-fal-billable-units ${s.headers['x-fal-billable-units']}`}`);
  } else if (!invalid.result) {
    for (const id of ['validation_after_queueing', 'failed_job_status', 'billed_failure'] as const) out[id] = notDone(invalid, 'accepted (submit 200), then');
  } else {
    const r = invalid.result;
    out.validation_after_queueing =
      r.status === 422 ? match(`submit 200, then the result answered 422`) : differs(`submit 200, then the result answered ${describe(r)}`);
    const last = invalid.last_status as { status?: unknown; error?: unknown; error_type?: unknown } | undefined;
    out.failed_job_status =
      r.status === 200
        ? unseen('the job did not fail')
        : last?.status === 'COMPLETED'
          ? match(`COMPLETED${last.error_type !== undefined ? `, error_type ${String(last.error_type)}` : ', no error_type'}`)
          : differs(`status went ${invalid.statuses.join(' > ') || 'nowhere'}${invalid.status_error ? `; status answered ${describe(invalid.status_error)}` : ''}`);
    out.billed_failure =
      r.status === 200
        ? unseen(`the job did not fail (${units(invalid)})`)
        : sameDecimal(invalid.billable_units, want.error)
          ? match(`failed ${r.status}, x-fal-billable-units ${invalid.billable_units}`)
          : differs(`failed ${r.status}, ${units(invalid)}`);
  }
  if (failedAnswer?.status === 422) {
    const h = failedAnswer.headers;
    const list = Array.isArray((failedAnswer.body as { detail?: unknown } | undefined)?.detail);
    const ok = list && h['x-fal-retryable'] === 'false' && h['x-fal-error-type'] === undefined;
    out.model_error_hints = (ok ? match : differs)(`${describe(failedAnswer)}${list ? '' : ' (detail is not a list)'}`);
  } else if (invalid) {
    out.model_error_hints = unseen(`no 422 to look at (${describe(failedAnswer)})`);
  }

  // --- cancel while queued ---
  if (!queued || queued.request_id === undefined) out.cancel_queued = notDone(queued, 'the job to cancel');
  else {
    const c = queued.cancel;
    const r = queued.result;
    const said = `cancel ${describe(c)}; status ${queued.statuses.join(' > ') || '?'}; result ${describe(r)}; ${units(queued)}`;
    const requested = c?.status === 202 && (c.body as { status?: unknown } | undefined)?.status === 'CANCELLATION_REQUESTED';
    if (c?.status === 400) out.cancel_queued = unseen(`the job had already completed: ${said}`);
    else if (r?.status === 200) out.cancel_queued = unseen(`the job ran anyway (it had probably started before the cancel arrived): ${said}`);
    else out.cancel_queued = (requested && r?.status === 400 && !billed(queued) ? match : differs)(said);
  }

  // --- cancel while running ---
  if (!running || running.request_id === undefined) out.cancel_running = notDone(running, 'the job to cancel');
  else if (!running.saw_in_progress) out.cancel_running = unseen(`no poll saw IN_PROGRESS (statuses ${running.statuses.join(' > ') || 'none'})`);
  else {
    const c = running.cancel;
    const r = running.result;
    const said = `cancel ${describe(c)}; result ${r ? String(r.status) : 'none'}; ${units(running)}`;
    const requested = c?.status === 202 && (c.body as { status?: unknown } | undefined)?.status === 'CANCELLATION_REQUESTED';
    if (c?.status === 400) out.cancel_running = unseen(`the job completed before the cancel arrived: ${said}`);
    else if (!r) out.cancel_running = notDone(running, `${said}; then`);
    else out.cancel_running = (requested && r.status === 200 && billed(running) ? match : differs)(r.status === 200 ? said : `${said}: ${describe(r)}`);
  }

  // --- upload ---
  const up = obs.upload;
  out.storage_upload = up.error
    ? differs(`upload failed: ${up.error}`)
    : up.fetch?.status === 200 && up.fetch.same_bytes
      ? match('URL served the same bytes (200)')
      : differs(up.fetch?.error ?? `URL answered ${up.fetch?.status}${up.fetch?.same_bytes === false ? ' with other bytes' : ''}`);

  // --- listing ---
  const l = obs.listing;
  const entries = Object.entries(l.requests);
  if (entries.length === 0) out.request_listing = unseen('no request to look for');
  else if (l.answer?.status !== 200) out.request_listing = unseen(`the listing answered ${describe(l.answer ?? { headers: {}, error: l.error })}`);
  else {
    const missing = entries.filter(([, r]) => !r.found).map(([, r]) => r.role);
    const partial = entries.filter(([, r]) => r.found && !(r.json_input && r.json_output)).map(([, r]) => r.role);
    const codes = entries
      .filter(([, r]) => r.found)
      .map(([, r]) => `${r.role} ${r.status_code ?? 'null'}`)
      .join(', ');
    const said = `${entries.length - missing.length}/${entries.length} listed (${codes || 'none'})${missing.length ? `; missing: ${missing.join(', ')}` : ''}${partial.length ? `; without input/output: ${partial.join(', ')}` : ''}`;
    out.request_listing = (missing.length === 0 && partial.length === 0 ? match : differs)(said);
  }
  return out;
}

function formatEmulator(text: string, want: { image: string; error: string }): string {
  return text.replace('{units}', want.image).replace('{errorUnits}', want.error);
}

export function priceConversation(obs: Observations, prices: PriceTable, priceSource: string): Cost {
  const key = priceKeyOf(obs.endpoint);
  const row: PriceEntry | undefined = prices.endpoints[key];
  if (!row) throw new Error(`the price table has no row for ${key}`);
  const rate = dec(row.usd_per_unit);
  let totalUnits: Dec = decInt(0);
  let totalUsd: Dec = decInt(0);
  const unreadable: string[] = [];
  const jobs: JobCost[] = [];
  for (const j of obs.jobs) {
    // A refused submit or a job without a result billed nothing we can see.
    const raw = j.billable_units ?? j.submit.headers['x-fal-billable-units'] ?? null;
    let u: Dec = decInt(0);
    if (raw !== null) {
      if (isDecimalString(raw)) u = dec(raw);
      else unreadable.push(`${j.role}: ${JSON.stringify(raw)}`);
    }
    const usd = mul(u, rate);
    totalUnits = add(totalUnits, u);
    totalUsd = add(totalUsd, usd);
    jobs.push({ role: j.role, ...(j.request_id ? { request_id: j.request_id } : {}), units: raw, usd: decToString(usd) });
  }
  return {
    endpoint: obs.endpoint,
    price_source: priceSource,
    unit: row.unit,
    usd_per_unit: row.usd_per_unit,
    jobs,
    total_units: decToString(totalUnits),
    total_usd: decToString(totalUsd),
    unreadable,
  };
}

export function buildReport(obs: Observations, target: Target, prices: PriceTable, priceSource: string): ProbeReport {
  const want = expectedUnits(prices, obs.endpoint);
  const judged = judgeAll(obs, prices);
  const lines: BehaviourLine[] = PROBE_BEHAVIOURS.map((b) => ({
    id: b.id,
    verdict: judged[b.id].verdict,
    fal: judged[b.id].fal,
    emulator: formatEmulator(b.emulator, want),
    docs: b.docs,
  }));
  const summary: Record<Verdict, number> = { MATCH: 0, DIFFERS: 0, 'NOT OBSERVED': 0 };
  for (const l of lines) summary[l.verdict] += 1;
  const exit_code = obs.problems.length > 0 ? 2 : summary.DIFFERS > 0 ? 1 : 0;
  return {
    target,
    endpoint: obs.endpoint,
    started_at: obs.started_at,
    finished_at: obs.finished_at,
    lines,
    cost: priceConversation(obs, prices, priceSource),
    problems: obs.problems,
    summary,
    exit_code,
    observations: obs,
  };
}

const TARGET_NAMES: Record<Target['kind'], string> = {
  emulator: 'the bundled fal emulator (in process)',
  'base-url': 'a fal-protocol server (FAL_BASE_URL)',
  fal: 'real fal (FAL_KEY)',
};

export function formatText(r: ProbeReport): string {
  const out: string[] = [];
  out.push(`fal probe: ${TARGET_NAMES[r.target.kind]} at ${r.target.url}, endpoint ${r.endpoint}, ${r.started_at}`);
  out.push('');
  const width = Math.max(...r.lines.map((l) => l.id.length));
  const vw = 'NOT OBSERVED'.length;
  for (const l of r.lines) {
    out.push(`${l.verdict.padEnd(vw)}  ${l.id.padEnd(width)}  fal: ${l.fal} | emulator: ${l.emulator} (${l.docs})`);
  }
  out.push('');
  const c = r.cost;
  out.push(`cost: ${c.total_units} ${c.unit}(s) x $${c.usd_per_unit} = $${c.total_usd} (rate: ${c.price_source}, row ${c.endpoint})`);
  for (const j of c.jobs) {
    out.push(`  ${j.role.padEnd(14)} ${(j.request_id ?? '(no job)').padEnd(36)}  units ${(j.units ?? '-').padEnd(6)} $${j.usd}`);
  }
  if (c.unreadable.length > 0) out.push(`  unreadable x-fal-billable-units (counted as 0): ${c.unreadable.join('; ')}`);
  for (const p of r.problems) out.push(`problem: ${p}`);
  const s = r.summary;
  out.push('');
  out.push(`${s.MATCH} MATCH, ${s.DIFFERS} DIFFERS, ${s['NOT OBSERVED']} NOT OBSERVED; exit ${r.exit_code}`);
  return `${out.join('\n')}\n`;
}

/** The whole report, with the observations and every HTTP answer (no request headers but an allow-list, so no key). */
export function formatJson(r: ProbeReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
