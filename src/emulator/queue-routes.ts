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
import { admit } from './admission.js';
import { answerFault, authorize, CALL_FAULTS } from './call-answers.js';
import { withErrorHints } from './errors.js';
import type { FaultPhase } from './faults.js';
import { headerValue, sendBytes, sendJson } from './http.js';
import type { JobFailure, JobRecord } from './jobs.js';
import { appPath, composeOutput, queueUrls, statusBody } from './output.js';

export { answerFault, authorize } from './call-answers.js';

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
