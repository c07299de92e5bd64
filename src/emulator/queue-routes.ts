/**
 * fal's model API as @fal-ai/client 1.10.1 speaks it: queue submit, status,
 * status stream (SSE), result, cancel on `queue.fal.run`, and the
 * connection-holding `fal.run`. Status/result/cancel are addressed by
 * owner/alias only (`fal-ai/z-image/requests/<id>`: the endpoint's sub-path
 * is dropped), so a request id is looked up globally and then checked to
 * belong to that app.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx, Route } from './context.js';
import type { ArmedFault, FaultPhase } from './faults.js';
import { withErrorHints } from './errors.js';
import { BodyTooLargeError, headerValue, lifecycleSeconds, parseJsonBody, readBody, sendBytes, sendJson } from './http.js';
import { imageDims, type JobFailure, type JobFaults, type JobRecord } from './jobs.js';
import { appPath, composeOutput, queueUrls, statusBody } from './output.js';
import { validateInput } from './validate.js';

const CALL_FAULTS = ['http_error', 'delay', 'reset', 'non_json'] as const;

const DEFAULT_DETAIL: Record<number, string> = {
  400: 'Bad Request (emulated)',
  401: 'Authentication failed (emulated)',
  403: 'Forbidden (emulated)',
  404: 'Not Found (emulated)',
  429: 'Rate limit exceeded (emulated)',
  500: 'Internal Server Error (emulated)',
  502: 'Bad Gateway (emulated)',
  503: 'Service Unavailable (emulated)',
  504: 'Gateway Timeout (emulated)',
};

function defaultDetail(status: number): unknown {
  if (status === 422) return [{ loc: ['body', 'prompt'], msg: 'Emulated validation error', type: 'value_error' }];
  return DEFAULT_DETAIL[status] ?? `Emulated HTTP ${status}`;
}

/**
 * Answers a call fault. Returns false for a pure delay (the caller then
 * carries on normally); true when the fault answered (or killed) the call.
 */
export async function answerFault(ctx: Ctx, req: IncomingMessage, res: ServerResponse, fault: ArmedFault, requestId: string): Promise<boolean> {
  if (fault.delay_ms) await ctx.sleep(fault.delay_ms);
  const headers: Record<string, string> = { 'x-fal-request-id': requestId, ...(fault.headers ?? {}) };
  switch (fault.kind) {
    case 'delay':
      return false;
    case 'reset':
      req.socket.destroy();
      return true;
    case 'non_json':
      sendBytes(
        res,
        fault.status ?? 200,
        fault.body ?? '<html><body><h1>emulated non-JSON response</h1></body></html>',
        'text/html; charset=utf-8',
        headers,
      );
      return true;
    default: {
      const status = fault.status ?? 500;
      if (fault.retry_after !== undefined) headers['retry-after'] = String(fault.retry_after);
      else if (status === 429) headers['retry-after'] = '1';
      const body: unknown = { detail: fault.detail ?? defaultDetail(status) };
      if (status < 500 && fault.error_type === undefined && fault.retryable === undefined) {
        sendJson(res, status, body, headers);
        return true;
      }
      const hinted = withErrorHints(status, body, { errorType: fault.error_type, retryable: fault.retryable });
      sendJson(res, status, hinted.body, { ...hinted.headers, ...headers });
      return true;
    }
  }
}

/** `Authorization: Key <anything>`, or exactly the configured key. */
export function authorize(ctx: Ctx, req: IncomingMessage, res: ServerResponse, requestId: string): boolean {
  const header = headerValue(req, 'authorization') ?? '';
  const m = /^Key\s+(\S.*)$/.exec(header.trim());
  const key = m?.[1]?.trim();
  if (!key) {
    sendJson(
      res,
      401,
      { detail: "Authentication is required to access this application. Send 'Authorization: Key <FAL_KEY>'." },
      { 'x-fal-request-id': requestId },
    );
    return false;
  }
  if (ctx.options.emulatorKey !== undefined && key !== ctx.options.emulatorKey) {
    sendJson(res, 401, { detail: 'No user found for Key ID and Secret' }, { 'x-fal-request-id': requestId });
    return false;
  }
  return true;
}

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
async function admit(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route, phase: 'submit' | 'run'): Promise<JobRecord | undefined> {
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

  if (!parsed.ok) {
    return failWith(422, { detail: [{ loc: ['body'], msg: `Invalid JSON body: ${parsed.message}`, type: 'value_error.jsondecode' }] });
  }
  const timeout = requestTimeout(req);
  if (!timeout.ok) {
    const hinted = withErrorHints(400, { detail: 'Invalid X-Fal-Request-Timeout: give seconds, more than 0.1' });
    return failWith(400, hinted.body, hinted.headers);
  }
  const checked = validateInput(endpoint.input, parsed.value);
  // On the queue, fal accepts the request and its runner's validation fails
  // the job later ("Invalid status code: 422" on the webhook); fal.run answers at once.
  const refuseNow =
    !checked.ok &&
    (phase === 'run' || !ctx.options.lateValidation || ctx.takeFault(req, phase, ['submit_validation'], { endpoint: endpointId, prompt }) !== undefined);
  if (!checked.ok && refuseNow) return failWith(422, { detail: checked.errors });
  const resolved = checked.ok ? checked.value : { ...(body ?? {}) };
  const { width, height } = checked.ok ? imageDims(resolved) : { width: 0, height: 0 };
  if (width * height > ctx.options.maxRenderPixels) {
    return failWith(422, {
      detail: [
        {
          loc: ['body', 'image_size'],
          msg: `the emulator renders at most ${ctx.options.maxRenderPixels} pixels per image`,
          type: 'value_error.emulator_limit',
          ctx: { limit_value: ctx.options.maxRenderPixels },
        },
      ],
    });
  }
  let webhookUrl: string | undefined;
  if (phase === 'submit') {
    const hook = route.query.get('fal_webhook');
    if (hook !== null) {
      let ok = false;
      try {
        ok = /^https?:$/.test(new URL(hook).protocol);
      } catch {
        ok = false;
      }
      if (!ok) return failWith(400, { detail: 'fal_webhook must be an absolute http(s) URL' });
      webhookUrl = hook;
    }
  }
  const faults = takeJobFaults(ctx, req, phase, endpointId, prompt);
  if (!checked.ok) {
    faults.fail = { status: 422, body: { detail: checked.errors }, at: 'start' };
  } else if (!faults.fail) {
    const lora = missingLora(ctx, resolved);
    if (lora) faults.fail = { status: 422, body: { detail: [lora] }, at: 'start' };
  }
  const job = ctx.engine.create(endpoint, body ?? {}, resolved, {
    via: phase === 'submit' ? 'queue' : 'run',
    webhookUrl,
    priority: headerValue(req, 'x-fal-queue-priority'),
    timeoutS: timeout.value,
    mediaTtlS: lifecycleSeconds(headerValue(req, 'x-fal-object-lifecycle-preference')),
    // https://docs.fal.ai/documentation/model-apis/media-expiration ("Preventing Payload Storage"): only "0" turns storage off.
    storeIo: headerValue(req, 'x-fal-store-io')?.trim() !== '0',
    faults,
  });
  // A committed fault: the job exists (and will bill) but this call fails,
  // the case where a client retry submits the same work twice.
  if (fault && fault.kind !== 'delay' && (await answerFault(ctx, req, res, { ...fault, delay_ms: 0 }, job.request_id))) return undefined;
  return job;
}

export async function submit(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const job = await admit(ctx, req, res, route, 'submit');
  if (!job) return;
  sendJson(
    res,
    200,
    {
      status: 'IN_QUEUE',
      request_id: job.request_id,
      gateway_request_id: job.request_id,
      ...queueUrls(job),
      queue_position: ctx.engine.queuePosition(job),
    },
    { 'x-fal-request-id': job.request_id },
  );
}

async function sendResult(ctx: Ctx, res: ServerResponse, job: JobRecord): Promise<void> {
  // After fal's own runner retry the result names the attempt that produced it.
  const id = job.gateway_request_id ?? job.request_id;
  const units = job.charge?.units ?? '0';
  if (job.outcome === 'ok') {
    const output = await composeOutput(ctx, job);
    const headers = { 'x-fal-request-id': id, 'x-fal-billable-units': units };
    if (job.escape_slashes) {
      // Outside strings JSON has no `/`, so escaping every one keeps the values and changes only the bytes.
      sendBytes(res, 200, JSON.stringify(output).replaceAll('/', '\\/'), 'application/json', headers);
      return;
    }
    sendJson(res, 200, output, headers);
    return;
  }
  const status = job.error?.status ?? 500;
  const hinted = withErrorHints(status, job.error?.body ?? { detail: 'Request failed' }, job.error?.hints);
  sendJson(res, status, hinted.body, { ...hinted.headers, 'x-fal-request-id': id, 'x-fal-billable-units': units });
}

export async function run(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  const job = await admit(ctx, req, res, route, 'run');
  if (!job) return;
  await new Promise<void>((resolve) => {
    const stop = ctx.listen(job.request_id, (j, event) => {
      if (event === 'completed') {
        stop();
        sendResult(ctx, res, j).then(resolve, resolve);
      } else if (event === 'removed') {
        stop();
        sendJson(res, 503, { detail: 'Emulator was reset' }, { 'x-fal-request-id': j.request_id });
        resolve();
      }
    });
    res.on('close', () => {
      stop();
      resolve();
    });
  });
}

type RequestAction = 'result' | 'status' | 'stream' | 'cancel';

/** Splits `<owner>/<alias>/requests/<id>/<action...>`; undefined if the path is not a request route. */
export function parseRequestRoute(segments: string[]): { app: string; id: string; action: RequestAction | 'unknown' } | undefined {
  const start = segments[0] === 'workflows' || segments[0] === 'comfy' ? 3 : 2;
  const at = segments.indexOf('requests', start);
  if (at < 0 || at + 1 >= segments.length) return undefined;
  const rest = segments.slice(at + 2).join('/');
  const action: RequestAction | 'unknown' =
    rest === '' ? 'result' : rest === 'status' ? 'status' : rest === 'status/stream' ? 'stream' : rest === 'cancel' ? 'cancel' : 'unknown';
  return { app: segments.slice(0, at).join('/'), id: segments[at + 1]!, action };
}

/** Finds the job for a request route, answering 404 when it does not exist under that app. */
function findJob(ctx: Ctx, res: ServerResponse, app: string, id: string): JobRecord | undefined {
  const job = ctx.engine.get(id);
  // Accept the full endpoint path too (`fal-ai/z-image/turbo/requests/...`).
  if (!job || !(appPath(job.endpoint) === app || job.endpoint === app)) {
    sendJson(res, 404, { detail: `Request ${id} not found` }, { 'x-fal-request-id': id });
    return undefined;
  }
  return job;
}

const METHOD: Record<RequestAction, string> = { result: 'GET', status: 'GET', stream: 'GET', cancel: 'PUT' };

export async function requestRoute(ctx: Ctx, req: IncomingMessage, res: ServerResponse, r: { app: string; id: string; action: RequestAction | 'unknown' }, route: Route): Promise<void> {
  if (r.action === 'unknown') {
    sendJson(res, 404, { detail: 'Not Found' }, { 'x-fal-request-id': r.id });
    return;
  }
  const phase: FaultPhase = r.action;
  ctx.calls[phase] += 1;
  if (req.method !== METHOD[r.action] && !(r.action === 'cancel' && req.method === 'POST')) {
    sendJson(res, 405, { detail: 'Method Not Allowed' }, { 'x-fal-request-id': r.id, allow: METHOD[r.action] });
    return;
  }
  if (!authorize(ctx, req, res, r.id)) return;
  const job = findJob(ctx, res, r.app, r.id);
  if (!job) return;
  const m = { endpoint: job.endpoint, prompt: String(job.resolved.prompt ?? '') };
  const kinds = r.action === 'cancel' ? [...CALL_FAULTS, 'cancel_refused' as const] : CALL_FAULTS;
  const fault = ctx.takeFault(req, phase, kinds, m);
  if (fault) {
    if (fault.kind === 'cancel_refused') {
      if (fault.delay_ms) await ctx.sleep(fault.delay_ms);
      if (fault.mode === 'ignored') sendJson(res, 202, { status: 'CANCELLATION_REQUESTED' }, { 'x-fal-request-id': job.request_id });
      else sendJson(res, 400, { status: 'ALREADY_COMPLETED' }, { 'x-fal-request-id': job.request_id });
      return;
    }
    if (await answerFault(ctx, req, res, fault, job.request_id)) return;
  }
  const logs = route.query.get('logs') === '1';
  switch (r.action) {
    case 'status':
      sendJson(res, job.status === 'COMPLETED' ? 200 : 202, statusBody(ctx, job, logs), { 'x-fal-request-id': job.request_id });
      return;
    case 'stream':
      stream(ctx, req, res, job, logs);
      return;
    case 'result':
      if (job.status !== 'COMPLETED') {
        sendJson(res, 400, { detail: 'Request is still in progress' }, { 'x-fal-request-id': job.request_id, 'x-fal-billable-units': '0' });
        return;
      }
      await sendResult(ctx, res, job);
      return;
    case 'cancel': {
      const outcome = ctx.engine.cancel(job.request_id);
      if (outcome === 'cancelled' || outcome === 'requested') sendJson(res, 202, { status: 'CANCELLATION_REQUESTED' }, { 'x-fal-request-id': job.request_id });
      else sendJson(res, 400, { status: 'ALREADY_COMPLETED' }, { 'x-fal-request-id': job.request_id });
      return;
    }
  }
}

/**
 * SSE status stream: one `data:` JSON line per state change (plus a
 * periodic update while queued, which doubles as keep-alive), closed right
 * after COMPLETED: FalStream resolves `done()` with the last event when the
 * body ends.
 */
function stream(ctx: Ctx, req: IncomingMessage, res: ServerResponse, job: JobRecord, logs: boolean): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-fal-request-id': job.request_id,
  });
  const write = (j: JobRecord) => res.write(`data: ${JSON.stringify(statusBody(ctx, j, logs))}\n\n`);
  write(job);
  if (job.status === 'COMPLETED') {
    res.end();
    return;
  }
  const heartbeat = setInterval(() => write(job), ctx.options.streamHeartbeatMs);
  heartbeat.unref();
  const stop = ctx.listen(job.request_id, (j, event) => {
    if (event === 'removed') {
      cleanup();
      res.end();
      return;
    }
    write(j);
    if (j.status === 'COMPLETED') {
      cleanup();
      res.end();
    }
  });
  function cleanup() {
    clearInterval(heartbeat);
    stop();
  }
  req.on('close', cleanup);
  res.on('close', cleanup);
}
