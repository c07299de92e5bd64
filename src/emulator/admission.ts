/**
 * Admission of a submit (queue) or run (`fal.run`) call: key, endpoint, body,
 * faults armed for the call and for the job, input validation (late on the
 * queue, as fal's runners validate), the emulator's own render limit and the
 * webhook URL; then the job is created.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { answerFault, authorize, CALL_FAULTS, defaultDetail } from './call-answers.js';
import type { Ctx, Route } from './context.js';
import type { EndpointSpec } from './endpoints.js';
import type { ArmedFault, FaultPhase } from './faults.js';
import { withErrorHints } from './errors.js';
import { BodyTooLargeError, headerValue, lifecycleSeconds, parseJsonBody, readBody, sendJson } from './http.js';
import { imageDims, type JobFailure, type JobFaults, type JobRecord } from './jobs.js';
import { validateInput } from './validate.js';
import { loadEditInputs } from './edit-inputs.js';

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function takeJobFaults(ctx: Ctx, req: IncomingMessage, phase: FaultPhase, endpoint: string, prompt: string): JobFaults {
  const m = { endpoint, prompt };
  const take = (kind: Parameters<Ctx['takeFault']>[2][number]) => ctx.takeFault(req, phase, [kind], m);
  const out: JobFaults = {};
  if (take('never_finish')) out.neverFinish = true;
  const nsfw = take('nsfw');
  if (nsfw) out.nsfwIndexes = nsfw.nsfw_indexes ?? [0];
  if (take('ignore_sync_mode')) out.ignoreSyncMode = true;
  if (take('escape_slashes')) out.escapeSlashes = true;
  if (take('runner_retry')) out.runnerRetry = true;
  if (take('omit_dimensions')) out.omitDimensions = true;
  if (take('webhook_payload_error')) out.webhookPayloadError = true;
  const failure = (f: ArmedFault, base: Omit<JobFailure, 'billable_units' | 'hints'>): JobFailure => {
    const out: JobFailure = { ...base };
    if (f.billable_units !== undefined) out.billable_units = f.billable_units;
    if (f.error_type !== undefined || f.retryable !== undefined) out.hints = { errorType: f.error_type, retryable: f.retryable };
    return out;
  };
  const fail = take('fail_after_start');
  if (fail) {
    const status = fail.status ?? 500;
    out.fail = failure(fail, { status, body: { detail: fail.detail ?? defaultDetail(status) }, at: 'end' });
  }
  const policy = take('content_policy');
  if (policy && !out.fail) out.fail = failure(policy, { status: 422, body: { detail: [contentPolicyError(prompt, policy.categories)] }, at: 'end' });
  const lora = take('lora_download_failed');
  if (lora && !out.fail) out.fail = failure(lora, { status: 422, body: { detail: [loraDownloadError(0, 'the LoRA weights')] }, at: 'start' });
  const latency = take('latency');
  if (latency && latency.latency_ms !== undefined) {
    out.latency = { totalMs: latency.latency_ms };
    if (latency.queue_ms !== undefined) out.latency.queueMs = latency.queue_ms;
  }
  return out;
}

/** fal's content checker refusal (https://fal.ai/docs/documentation/model-apis/errors#content_policy_violation). */
function contentPolicyError(prompt: string, categories: string[] | undefined): Record<string, unknown> {
  return {
    loc: ['body', 'prompt'],
    msg: 'The content was flagged by a content checker.',
    type: 'content_policy_violation',
    url: 'https://docs.fal.ai/errors#content_policy_violation',
    input: prompt,
    categories: categories ?? ['sexual'],
  };
}

function loraDownloadError(index: number, url: string): Record<string, unknown> {
  return {
    loc: ['body', 'loras', index, 'path'],
    msg: `Failed to download ${url}: the file does not exist or has expired`,
    type: 'file_download_error',
    url: 'https://docs.fal.ai/errors#file_download_error',
    input: url,
  };
}

/** The first LoRA whose weights live on this emulator's CDN and are gone (never uploaded, or expired). */
function missingLora(ctx: Ctx, resolved: Record<string, unknown>): Record<string, unknown> | undefined {
  const loras = resolved.loras;
  if (!Array.isArray(loras)) return undefined;
  for (const [i, l] of loras.entries()) {
    const path = (l as { path?: unknown } | undefined)?.path;
    if (typeof path === 'string' && ctx.mediaMissing(path)) return loraDownloadError(i, path);
  }
  return undefined;
}

/** `X-Fal-Request-Timeout`: seconds, more than 0.1 (https://fal.ai/docs/documentation/model-apis/common-parameters). */
function requestTimeout(req: IncomingMessage): { ok: true; value: number | undefined } | { ok: false } {
  const raw = headerValue(req, 'x-fal-request-timeout');
  if (raw === undefined) return { ok: true, value: undefined };
  const n = Number(raw);
  return Number.isFinite(n) && n > 0.1 ? { ok: true, value: n } : { ok: false };
}


/**
 * Shared front half of submit and run: auth, endpoint lookup, body, faults,
 * validation, job creation. Returns the job, or undefined after answering.
 */
export async function admit(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route, phase: 'submit' | 'run'): Promise<JobRecord | undefined> {
  ctx.calls[phase] += 1;
  const errorId = randomUUID();
  const idHeader = { 'x-fal-request-id': errorId, 'x-fal-billable-units': '0' };
  if (!authorize(ctx, req, res, errorId)) return undefined;
  const endpointId = route.segments.join('/');
  const endpoint = ctx.endpoints.get(endpointId);
  if (!endpoint) {
    sendJson(res, 404, { detail: `Application '${endpointId}' not found` }, idHeader);
    return undefined;
  }
  let raw: Buffer;
  try {
    raw = await readBody(req, ctx.options.jsonBodyLimit);
  } catch (err) {
    if (err instanceof BodyTooLargeError) sendJson(res, 413, { detail: 'Request body too large' }, idHeader);
    return undefined;
  }
  const parsed = parseJsonBody(raw);
  const body = parsed.ok && isPlainObject(parsed.value) ? parsed.value : undefined;
  const prompt = typeof body?.prompt === 'string' ? body.prompt : '';
  const fault = ctx.takeFault(req, phase, CALL_FAULTS, { endpoint: endpointId, prompt });
  if (fault && !fault.commit && (await answerFault(ctx, req, res, fault, errorId))) return undefined;
  if (fault?.commit && fault.delay_ms) await ctx.sleep(fault.delay_ms);
  const failWith = async (status: number, payload: unknown, headers: Record<string, string> = {}) => {
    if (fault && fault.kind !== 'delay' && (await answerFault(ctx, req, res, { ...fault, delay_ms: 0 }, errorId))) return undefined;
    sendJson(res, status, payload, { ...headers, ...idHeader });
    return undefined;
  };

  const checked = checkCall(ctx, req, route, phase, endpoint, parsed, body, prompt);
  if ('status' in checked) return failWith(checked.status, checked.payload, checked.headers);
  const { input, resolved, webhookUrl, timeoutS } = checked;
  const faults = takeJobFaults(ctx, req, phase, endpointId, prompt);
  if (!input.ok) {
    faults.fail = { status: 422, body: { detail: input.errors }, at: 'start' };
  } else if (!faults.fail) {
    const lora = missingLora(ctx, resolved);
    if (lora) faults.fail = { status: 422, body: { detail: [lora] }, at: 'start' };
  }
  const loaded = input.ok && endpoint.images && !faults.fail ? await loadEditInputs(ctx, endpoint.images, resolved) : undefined;
  if (loaded && !loaded.ok) faults.fail = { status: 422, body: { detail: [loaded.detail] }, at: 'start' };
  const job = ctx.engine.create(endpoint, body ?? {}, resolved, {
    via: phase === 'submit' ? 'queue' : 'run',
    webhookUrl,
    priority: headerValue(req, 'x-fal-queue-priority'),
    timeoutS,
    mediaTtlS: lifecycleSeconds(headerValue(req, 'x-fal-object-lifecycle-preference')),
    // https://docs.fal.ai/documentation/model-apis/media-expiration ("Preventing Payload Storage"): only "0" turns storage off.
    storeIo: headerValue(req, 'x-fal-store-io')?.trim() !== '0',
    faults,
  });
  if (loaded?.ok) job.edit = loaded.edit;
  // A committed fault: the job exists (and will bill) but this call fails,
  // the case where a client retry submits the same work twice.
  if (fault && fault.kind !== 'delay' && (await answerFault(ctx, req, res, { ...fault, delay_ms: 0 }, job.request_id))) return undefined;
  return job;
}

type Parsed = ReturnType<typeof parseJsonBody>;
type Refusal = { status: number; payload: unknown; headers?: Record<string, string> };
interface Admitted {
  input: ReturnType<typeof validateInput>;
  resolved: Record<string, unknown>;
  webhookUrl: string | undefined;
  timeoutS: number | undefined;
}

/** What refuses the call at once (bad JSON, a bad header, input fal.run would refuse, the render limit, a bad webhook URL), or what the job is made of. */
function checkCall(ctx: Ctx, req: IncomingMessage, route: Route, phase: 'submit' | 'run', endpoint: EndpointSpec, parsed: Parsed, body: Record<string, unknown> | undefined, prompt: string): Refusal | Admitted {
  if (!parsed.ok) {
    return { status: 422, payload: { detail: [{ loc: ['body'], msg: `Invalid JSON body: ${parsed.message}`, type: 'value_error.jsondecode' }] } };
  }
  const timeout = requestTimeout(req);
  if (!timeout.ok) {
    const hinted = withErrorHints(400, { detail: 'Invalid X-Fal-Request-Timeout: give seconds, more than 0.1' });
    return { status: 400, payload: hinted.body, headers: hinted.headers };
  }
  const input = validateInput(endpoint.input, parsed.value);
  // On the queue, fal accepts the request and its runner's validation fails
  // the job later ("Invalid status code: 422" on the webhook); fal.run answers at once.
  const refuseNow =
    !input.ok &&
    (phase === 'run' || !ctx.options.lateValidation || ctx.takeFault(req, phase, ['submit_validation'], { endpoint: endpoint.id, prompt }) !== undefined);
  if (!input.ok && refuseNow) return { status: 422, payload: { detail: input.errors } };
  const resolved = input.ok ? input.value : { ...(body ?? {}) };
  const { width, height } = input.ok ? imageDims(resolved) : { width: 0, height: 0 };
  if (width * height > ctx.options.maxRenderPixels) {
    const limit = ctx.options.maxRenderPixels;
    const detail = [{ loc: ['body', 'image_size'], msg: `the emulator renders at most ${limit} pixels per image`, type: 'value_error.emulator_limit', ctx: { limit_value: limit } }];
    return { status: 422, payload: { detail } };
  }
  const hook = phase === 'submit' ? route.query.get('fal_webhook') : null;
  if (hook !== null && !isHttpUrl(hook)) return { status: 400, payload: { detail: 'fal_webhook must be an absolute http(s) URL' } };
  return { input, resolved, webhookUrl: hook ?? undefined, timeoutS: timeout.value };
}

function isHttpUrl(s: string): boolean {
  try {
    return /^https?:$/.test(new URL(s).protocol);
  } catch {
    return false;
  }
}
