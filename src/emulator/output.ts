/**
 * fal-shaped bodies built from a job record: the model output, the queue
 * status, the webhook payload. Image URLs are composed at delivery time from
 * the stored render specs, so a changed `publicUrl` (or a restart) never
 * leaves stale URLs in the state file, and `sync_mode` data URIs are never
 * stored at all.
 */
import type { Ctx } from './context.js';
import { errorTypeOf } from './errors.js';
import { CONTENT_TYPES, fileName, imagePath } from './images.js';
import type { JobRecord } from './jobs.js';

export function appPath(endpointId: string): string {
  const parts = endpointId.split('/');
  const n = parts[0] === 'workflows' || parts[0] === 'comfy' ? 3 : 2;
  return parts.slice(0, n).join('/');
}

/** The fal URLs for a request, as real fal reports them (clients map them through their fetch). */
export function queueUrls(job: JobRecord): { response_url: string; status_url: string; cancel_url: string } {
  const base = `https://queue.fal.run/${appPath(job.endpoint)}/requests/${job.request_id}`;
  return { response_url: base, status_url: `${base}/status`, cancel_url: `${base}/cancel` };
}

export async function composeOutput(ctx: Ctx, job: JobRecord): Promise<Record<string, unknown>> {
  const sync = job.resolved.sync_mode === true && job.ignore_sync_mode !== true;
  const specs = job.images ?? [];
  const expiresAt = mediaExpiry(ctx, job);
  const images = await Promise.all(
    specs.map(async (spec) => {
      const contentType = CONTENT_TYPES[spec.format];
      // width/height are optional in fal's own output types; the omit_dimensions fault leaves them out.
      const image: Record<string, unknown> = job.omit_dimensions
        ? { url: '', content_type: contentType, file_name: fileName(spec) }
        : { url: '', width: spec.width, height: spec.height, content_type: contentType, file_name: fileName(spec) };
      if (sync) {
        const bytes = await ctx.images.get(spec);
        image.url = `data:${contentType};base64,${bytes.toString('base64')}`;
        image.file_size = bytes.length;
      } else {
        image.url = `${ctx.publicUrl()}/${imagePath(spec, expiresAt)}`;
      }
      return image;
    }),
  );
  const inference = job.started_at && job.completed_at ? (job.completed_at - job.started_at) / 1000 : 0;
  return {
    images,
    timings: { inference },
    seed: job.seed,
    has_nsfw_concepts: job.has_nsfw_concepts ?? [],
    prompt: job.resolved.prompt,
  };
}

/** When a job's output media stops being served (unix seconds); undefined = never. */
export function mediaExpiry(ctx: Ctx, job: JobRecord): number | undefined {
  const ttl = job.media_ttl_s === undefined ? ctx.options.mediaTtlS : job.media_ttl_s;
  if (ttl === null) return undefined;
  return Math.ceil((job.completed_at ?? Date.now()) / 1000) + ttl;
}

/** A short message for an error body (`detail` string, or the first entry's msg). */
export function errorMessage(body: unknown): string {
  const detail = (body as { detail?: unknown } | undefined)?.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail) && detail.length > 0) {
    const first = detail[0] as { msg?: unknown };
    if (typeof first.msg === 'string') return first.msg;
  }
  return 'Request failed';
}

function logLines(job: JobRecord): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = [];
  const line = (at: number, message: string, level = 'INFO') =>
    lines.push({ message, level, source: 'user', timestamp: new Date(at).toISOString() });
  if (job.started_at) {
    const n = job.resolved.num_images ?? 1;
    if (job.runner_retry) line(job.started_at, `[emulated] runner failed; fal retried the request as ${job.gateway_request_id ?? '?'}`, 'WARNING');
    line(job.started_at, `[emulated] ${job.endpoint}: generating ${String(n)} image(s)`);
  }
  if (job.cancel_requested_at) line(job.cancel_requested_at, '[emulated] cancellation requested; the running request continues', 'WARNING');
  if (job.status === 'COMPLETED' && job.completed_at) {
    if (job.outcome === 'ok') line(job.completed_at, '[emulated] inference finished');
    else if (job.outcome === 'cancelled') line(job.completed_at, '[emulated] request cancelled', 'WARNING');
    else line(job.completed_at, `[emulated] ${errorMessage(job.error?.body)}`, 'ERROR');
  }
  return lines;
}

export function statusBody(ctx: Ctx, job: JobRecord, withLogs: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = { status: job.status, request_id: job.request_id, ...queueUrls(job) };
  if (job.status === 'IN_QUEUE') body.queue_position = ctx.engine.queuePosition(job);
  body.logs = withLogs ? logLines(job) : null;
  body.metrics =
    job.status === 'COMPLETED' && job.outcome === 'ok' && job.started_at && job.completed_at
      ? { inference_time: (job.completed_at - job.started_at) / 1000 }
      : {};
  if (job.status === 'COMPLETED' && job.outcome !== 'ok') {
    body.error = errorMessage(job.error?.body);
    body.error_type = job.outcome === 'cancelled' ? 'client_cancelled' : errorTypeOf(job.error?.status ?? 500, job.error?.body);
  }
  return body;
}

export async function webhookBody(ctx: Ctx, job: JobRecord): Promise<string> {
  const ids = { request_id: job.request_id, gateway_request_id: job.gateway_request_id ?? job.request_id };
  if (job.outcome === 'ok' && job.webhook_payload_error) {
    // fal sends this when the output could not be serialised for the webhook; the result route still has it.
    return JSON.stringify({ ...ids, status: 'OK', payload: null, payload_error: 'Response payload could not be serialized as JSON' });
  }
  if (job.outcome === 'ok') return JSON.stringify({ ...ids, status: 'OK', payload: await composeOutput(ctx, job) });
  return JSON.stringify({
    ...ids,
    status: 'ERROR',
    error: `Invalid status code: ${job.error?.status ?? 500}`,
    payload: job.error?.body ?? null,
  });
}
