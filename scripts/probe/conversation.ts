/**
 * The probe's conversation with a fal (real fal, a fal-protocol server, or
 * the bundled emulator): a few cheap queue jobs, one upload, one request
 * listing. It only observes and writes down; judging is report.ts.
 *
 * Cost on real fal (z-image/turbo, $0.005 per megapixel, 512x512 images):
 * at most four jobs can bill (the image, the failed one, and both cancelled
 * ones if fal ran them), one image each, so well under $0.05. The invalid
 * input is `num_images: 0`, so even a fal that did not validate it could
 * not render more than one image.
 */
import { ApiError, type FalClient } from '@fal-ai/client';
import { describeError, type CallRecord, type FetchRecorder } from './recorder.js';

export const PROBE_ENDPOINT = 'fal-ai/z-image/turbo';
export const PLATFORM_LISTING_URL = 'https://api.fal.ai/v1/models/requests/by-endpoint';

export interface ProbeOptions {
  client: FalClient;
  recorder: FetchRecorder;
  /** The fal key, for the Platform API call (the client has none for it). */
  credentials: string;
  endpoint?: string;
  /** How long one job may take from submit to COMPLETED; default 120 s. */
  jobTimeoutMs?: number;
  /** Status polling interval; default 250 ms. */
  pollMs?: number;
  /** Polling interval while waiting for a job to be IN_PROGRESS (to cancel it there); default 100 ms. */
  watchPollMs?: number;
  /** How long a cancelled job may take to report COMPLETED; default 30 s. */
  cancelSettleMs?: number;
  /** How long to wait for the requests to show up in the listing; default 60 s. */
  listingTimeoutMs?: number;
  /** `startTimeout` (seconds, > 1) sent with the image job; default 90. */
  startTimeoutS?: number;
  /** Progress lines (the CLI sends them to stderr). */
  log?: (line: string) => void;
}

/** One HTTP answer as the report needs it. */
export interface Answer {
  status?: number;
  headers: Record<string, string>;
  body?: unknown;
  error?: string;
}

export interface JobObservation {
  role: 'image' | 'invalid' | 'cancel_queued' | 'cancel_running';
  input: Record<string, unknown>;
  submit: Answer;
  request_id?: string;
  /** Distinct statuses seen while polling, in order. */
  statuses: string[];
  /** The last status body (COMPLETED carries error/error_type for a failed job). */
  last_status?: unknown;
  status_error?: Answer;
  cancel?: Answer;
  result?: Answer;
  /** The result's x-fal-request-id, as the client reports it. */
  result_request_id?: string;
  /** The output when the result was 200. */
  output?: unknown;
  /** x-fal-billable-units of the last result answer; null when absent. */
  billable_units?: string | null;
  /** Our own deadline ran out before COMPLETED. */
  timed_out?: boolean;
  /** Only cancel_running: whether a poll saw IN_PROGRESS before the cancel. */
  saw_in_progress?: boolean;
  /** Only image: the x-fal-request-timeout header the submit sent. */
  start_timeout_sent?: string;
  /** Only image: the GET of the first output URL. */
  download?: { url: string; status?: number; content_type?: string; bytes?: number; error?: string };
}

export interface UploadObservation {
  url?: string;
  error?: string;
  fetch?: { status?: number; same_bytes?: boolean; error?: string };
}

export interface ListedRequest {
  found: boolean;
  status_code?: number | null;
  json_input?: boolean;
  json_output?: boolean;
}

export interface ListingObservation {
  /** The last answer of the listing. */
  answer?: Answer;
  rounds: number;
  requests: Record<string, ListedRequest & { role: string }>;
  error?: string;
}

export interface Observations {
  endpoint: string;
  started_at: string;
  finished_at: string;
  jobs: JobObservation[];
  upload: UploadObservation;
  listing: ListingObservation;
  /** Steps that could not run to the end, with why (network errors, our deadlines). */
  problems: string[];
  calls: CallRecord[];
}

/**
 * The prompt of each job: `<role>,` in it names the job, so the listing and
 * a test's emulator faults (`prompt_contains`) can tell them apart.
 */
export function probePrompt(tag: string, role: JobObservation['role']): string {
  return `fal probe ${tag}: ${role}, a red square on white`;
}

/** A failure that makes the rest of the conversation pointless (nothing answers). */
export class ProbeAbort extends Error {
  override name = 'ProbeAbort';
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `POST https://queue.fal.run/...: <error> (3 attempts)` for the calls that got no answer. */
function failedCalls(calls: CallRecord[]): string | undefined {
  const failed = calls.filter((c) => c.error !== undefined);
  const last = failed[failed.length - 1];
  if (!last) return undefined;
  const tries = failed.filter((c) => c.method === last.method && c.url === last.url).length;
  return `${last.method} ${last.url}: ${last.error}${tries > 1 ? ` (${tries} attempts)` : ''}`;
}

/** Errors that are answers (fal said no) rather than a missing fal. */
const isAnswer = (err: unknown): err is ApiError<unknown> => err instanceof ApiError;

export async function runProbe(opts: ProbeOptions): Promise<Observations> {
  const { client, recorder } = opts;
  const endpoint = opts.endpoint ?? PROBE_ENDPOINT;
  const jobTimeoutMs = opts.jobTimeoutMs ?? 120_000;
  const pollMs = opts.pollMs ?? 250;
  const watchPollMs = opts.watchPollMs ?? 100;
  const cancelSettleMs = opts.cancelSettleMs ?? 30_000;
  const listingTimeoutMs = opts.listingTimeoutMs ?? 60_000;
  const startTimeoutS = opts.startTimeoutS ?? 90;
  const log = opts.log ?? (() => {});
  const started = Date.now();
  const tag = `${new Date(started).toISOString()} ${Math.random().toString(36).slice(2, 8)}`;
  const problems: string[] = [];

  /** The last recorded answer among calls since `mark` that matches. */
  const lastAnswer = async (mark: number, match: (c: CallRecord) => boolean): Promise<Answer | undefined> => {
    await recorder.settled();
    const call = recorder
      .since(mark)
      .filter(match)
      .pop();
    if (!call) return undefined;
    const a: Answer = { headers: { ...call.headers } };
    if (call.status !== undefined) a.status = call.status;
    if (call.body !== undefined) a.body = call.body;
    if (call.error !== undefined) a.error = call.error;
    return a;
  };

  /** Runs a client call; an ApiError is an answer, anything else means fal cannot be reached. */
  const attempt = async <T>(what: string, fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; err: ApiError<unknown> }> => {
    const mark = recorder.mark();
    try {
      return { ok: true, value: await fn() };
    } catch (err) {
      if (isAnswer(err)) return { ok: false, err };
      throw new ProbeAbort(`${what}: ${failedCalls(recorder.since(mark)) ?? describeError(err)}`, { cause: err });
    }
  };

  const submit = async (job: JobObservation, startTimeout?: number): Promise<boolean> => {
    const mark = recorder.mark();
    const r = await attempt(`submit (${job.role})`, () =>
      client.queue.submit(endpoint, { input: job.input as never, ...(startTimeout === undefined ? {} : { startTimeout }) }),
    );
    const isSubmit = (c: CallRecord) => c.method === 'POST' && c.url.includes('queue.fal.run');
    job.submit = (await lastAnswer(mark, isSubmit)) ?? { headers: {} };
    const sentCall = recorder.since(mark).filter(isSubmit).pop();
    const sentTimeout = sentCall?.sent['x-fal-request-timeout'];
    if (sentTimeout !== undefined) job.start_timeout_sent = sentTimeout;
    if (!r.ok) {
      const st = r.err.status;
      // Nothing else will work with a key fal refuses; stop here rather than report every behaviour unseen.
      if (st === 401 || st === 403) throw new ProbeAbort(`submit (${job.role}): fal refused the credentials: ${st} ${describeError(r.err)}`);
      if (st !== 422) problems.push(`submit (${job.role}) answered ${st}: ${describeError(r.err)}`);
      return false;
    }
    job.request_id = r.value.request_id;
    return true;
  };

  const status = async (job: JobObservation): Promise<string | undefined> => {
    const mark = recorder.mark();
    const r = await attempt(`status (${job.role})`, () => client.queue.status(endpoint, { requestId: job.request_id!, logs: false }));
    if (!r.ok) {
      job.status_error = (await lastAnswer(mark, (c) => c.url.includes('/status'))) ?? { headers: {}, status: r.err.status };
      return undefined;
    }
    const s = r.value.status;
    if (job.statuses[job.statuses.length - 1] !== s) job.statuses.push(s);
    job.last_status = r.value;
    return s;
  };

  /** Polls until `until` holds; false on our deadline or a status error. */
  const pollUntil = async (job: JobObservation, until: (s: string) => boolean, deadline: number, every: number): Promise<boolean> => {
    for (;;) {
      const s = await status(job);
      if (s === undefined) return false;
      if (until(s)) return true;
      if (Date.now() >= deadline) return false;
      await sleep(every);
    }
  };

  const result = async (job: JobObservation): Promise<void> => {
    const mark = recorder.mark();
    const r = await attempt(`result (${job.role})`, () => client.queue.result(endpoint, { requestId: job.request_id! }));
    const isResult = (c: CallRecord) => c.method === 'GET' && c.url.includes(`/requests/${job.request_id}`) && !c.url.includes('/status');
    job.result = (await lastAnswer(mark, isResult)) ?? { headers: {} };
    job.billable_units = job.result.headers['x-fal-billable-units'] ?? null;
    if (r.ok) {
      job.output = r.value.data;
      job.result_request_id = r.value.requestId;
      // The body was read by the client; the record may not have kept a big one.
      job.result.body ??= r.value.data;
    } else if (job.result.body === undefined && r.err.body !== undefined) {
      job.result.body = r.err.body;
    }
  };

  const cancel = async (job: JobObservation): Promise<void> => {
    const mark = recorder.mark();
    // A 400 ALREADY_COMPLETED is an answer too: the client throws it, the record keeps it.
    await attempt(`cancel (${job.role})`, () => client.queue.cancel(endpoint, { requestId: job.request_id! }));
    job.cancel = (await lastAnswer(mark, (c) => c.url.endsWith('/cancel'))) ?? { headers: {} };
  };

  /** On our own deadline: cancel (a queued job then costs nothing) and say so. */
  const giveUp = async (job: JobObservation, ms: number) => {
    job.timed_out = true;
    problems.push(`${job.role}: request ${job.request_id} did not complete within ${Math.round(ms / 1000)} s; cancelled it`);
    if (!job.cancel) await cancel(job).catch(() => {});
  };

  /** Polls until COMPLETED; a status error or our deadline is a problem of the run. */
  const waitDone = async (job: JobObservation, deadline: number): Promise<boolean> => {
    if (await pollUntil(job, (s) => s === 'COMPLETED', deadline, pollMs)) return true;
    if (job.status_error) problems.push(`${job.role}: status of ${job.request_id} answered ${job.status_error.status ?? job.status_error.error}`);
    else await giveUp(job, jobTimeoutMs);
    return false;
  };

  const newJob = (role: JobObservation['role'], input: Record<string, unknown>): JobObservation => ({
    role,
    input,
    submit: { headers: {} },
    statuses: [],
  });
  const cheap = (role: JobObservation['role'], extra: Record<string, unknown> = {}) => ({
    prompt: probePrompt(tag, role),
    image_size: 'square',
    num_images: 1,
    num_inference_steps: 1,
    output_format: 'jpeg',
    ...extra,
  });

  const jobs: JobObservation[] = [];

  // 1. One cheap image: submit (with a start deadline it costs nothing to send), poll, result, download.
  log('probe: 1/5 one 512x512 image through the queue');
  const image = newJob('image', cheap('image'));
  jobs.push(image);
  if ((await submit(image, startTimeoutS)) && (await waitDone(image, Date.now() + jobTimeoutMs))) {
    await result(image);
    const r = image.result;
    // A start deadline that expired is an observation (start_timeout_expiry); any other failure leaves the image lines unseen.
    if (r?.status !== 200 && r?.headers['x-fal-request-timeout-type'] !== 'user') problems.push(`image: the job failed: ${r?.status ?? r?.error} ${JSON.stringify(r?.body ?? null).slice(0, 200)}`);
    const first = (image.output as { images?: Array<{ url?: unknown }> } | undefined)?.images?.[0];
    if (typeof first?.url === 'string') {
      image.download = { url: first.url };
      try {
        const res = await recorder.fetch(first.url);
        const bytes = new Uint8Array(await res.arrayBuffer());
        image.download.status = res.status;
        image.download.bytes = bytes.length;
        const type = res.headers.get('content-type');
        if (type !== null) image.download.content_type = type;
      } catch (err) {
        image.download.error = describeError(err);
      }
    }
  }

  // 2. Invalid input on the queue: refused at once, or accepted and failed later?
  log('probe: 2/5 invalid input (num_images: 0) on the queue');
  const invalid = newJob('invalid', cheap('invalid', { num_images: 0 }));
  jobs.push(invalid);
  if ((await submit(invalid)) && (await waitDone(invalid, Date.now() + jobTimeoutMs))) await result(invalid);

  // 3a. Cancel at once, while the job is (most likely) still queued.
  log('probe: 3/5 cancel a queued job, then one IN_PROGRESS');
  const queued = newJob('cancel_queued', cheap('cancel_queued'));
  jobs.push(queued);
  if (await submit(queued)) {
    await cancel(queued);
    await pollUntil(queued, (s) => s === 'COMPLETED', Date.now() + cancelSettleMs, pollMs);
    await result(queued);
  }

  // 3b. Cancel once IN_PROGRESS. Eight steps cost the same per megapixel and run longer, so the window is wider.
  const running = newJob('cancel_running', cheap('cancel_running', { num_inference_steps: 8 }));
  jobs.push(running);
  if (await submit(running)) {
    const deadline = Date.now() + jobTimeoutMs;
    running.saw_in_progress = await pollUntil(running, (s) => s === 'IN_PROGRESS' || s === 'COMPLETED', deadline, watchPollMs);
    running.saw_in_progress &&= running.statuses.includes('IN_PROGRESS');
    if (running.saw_in_progress) await cancel(running);
    if (await waitDone(running, deadline)) await result(running);
  }

  // 4. One small upload, read back.
  log('probe: 4/5 storage upload');
  const upload: UploadObservation = {};
  const bytes = new TextEncoder().encode(`fal probe upload ${tag}\n`);
  try {
    upload.url = await client.storage.upload(new Blob([bytes], { type: 'text/plain' }));
  } catch (err) {
    if (!isAnswer(err)) throw new ProbeAbort(`storage upload: ${describeError(err)}`, { cause: err });
    upload.error = `${err.status} ${describeError(err)}`;
  }
  if (upload.url) {
    try {
      const res = await recorder.fetch(upload.url);
      const got = new Uint8Array(await res.arrayBuffer());
      upload.fetch = { status: res.status, same_bytes: Buffer.from(got).equals(Buffer.from(bytes)) };
    } catch (err) {
      upload.fetch = { error: describeError(err) };
    }
  }

  // 5. The Platform API listing: are the requests of steps 1-3 there, with input and output?
  log('probe: 5/5 Platform API request listing');
  const listing = await listRequests(opts, endpoint, started, jobs, listingTimeoutMs);

  await recorder.settled();
  return {
    endpoint,
    started_at: new Date(started).toISOString(),
    finished_at: new Date().toISOString(),
    jobs,
    upload,
    listing,
    problems,
    calls: [...recorder.calls],
  };
}

interface ListingItem {
  request_id?: unknown;
  status_code?: unknown;
  json_input?: unknown;
  json_output?: unknown;
}

/**
 * Pages through `GET /v1/models/requests/by-endpoint` (newest first) until
 * every request of the conversation is listed with its output, or the time
 * is up: fal's listing may lag behind the queue.
 */
async function listRequests(opts: ProbeOptions, endpoint: string, since: number, jobs: JobObservation[], timeoutMs: number): Promise<ListingObservation> {
  const wanted = new Map<string, string>();
  for (const j of jobs) if (j.request_id) wanted.set(j.request_id, j.role);
  const out: ListingObservation = { rounds: 0, requests: {} };
  for (const [id, role] of wanted) out.requests[id] = { role, found: false };
  if (wanted.size === 0) return out;
  // A few minutes of slack for clock skew between this machine and fal.
  const start = new Date(since - 5 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    out.rounds += 1;
    let cursor: string | undefined;
    for (let page = 0; page < 10; page++) {
      const q = new URLSearchParams({ endpoint_id: endpoint, start, expand: 'payloads', limit: '100' });
      if (cursor) q.set('cursor', cursor);
      let res: Response;
      try {
        res = await opts.recorder.fetch(`${PLATFORM_LISTING_URL}?${q}`, {
          headers: { authorization: `Key ${opts.credentials}`, accept: 'application/json' },
        });
      } catch (err) {
        throw new ProbeAbort(`request listing: ${describeError(err)}`, { cause: err });
      }
      const text = await res.text();
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = text.slice(0, 500);
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of res.headers) if (k.startsWith('x-fal-')) headers[k] = v;
      out.answer = { status: res.status, headers, ...(res.ok ? {} : { body }) };
      if (!res.ok) {
        out.error = `listing answered ${res.status}`;
        return out;
      }
      const b = body as { items?: ListingItem[]; next_cursor?: unknown; has_more?: unknown };
      for (const item of b.items ?? []) {
        const id = typeof item.request_id === 'string' ? item.request_id : undefined;
        if (!id || !wanted.has(id)) continue;
        out.requests[id] = {
          role: wanted.get(id)!,
          found: true,
          status_code: typeof item.status_code === 'number' ? item.status_code : null,
          json_input: item.json_input !== undefined && item.json_input !== null,
          json_output: item.json_output !== undefined && item.json_output !== null,
        };
      }
      if (b.has_more !== true || typeof b.next_cursor !== 'string') break;
      cursor = b.next_cursor;
    }
    const done = Object.values(out.requests).every((r) => r.found && r.json_output);
    if (done || Date.now() >= deadline) return out;
    await sleep(3000);
  }
}
