import type { Logger } from 'pino';
import { ApiError, insufficientQuota, MediaError, serviceUnavailable, storageFailed, upstreamError } from '../errors.js';
import type { InFlight } from './closing.js';
import type { FalJobStatus, FalResult } from '../fal/types.js';
import { decideRequest } from '../metering/job-state.js';
import { formatUsd, type Markup } from '../metering/money.js';
import { callerChargeForJobs, encodePricing, jobEstimates, maxCharge, splitIntoJobs, type Charge } from '../metering/pricing.js';
import type { CompletedJob } from '../metering/settlement.js';
import type { Metrics } from '../metrics.js';
import type { ImagesResponse } from '../schemas/images-response.js';
import { MeteringUnavailable, runJob, type JobOutcome } from './job-runner.js';
import type { CanonicalRequest } from './normalize.js';
import type { FalGateway, LoraResolver, Media, RequestLedger, Settlement } from './ports.js';
import { RequestStop, Shutdown } from './request-stop.js';
import { imagesResponse } from './response.js';

/**
 * The use case: one caller request → its fal jobs → an OpenAI-shaped
 * result, metered. Reserve, run the jobs (job-runner.ts), settle what the
 * job states decide (metering/job-state.ts), build the answer (response.ts).
 * It knows nothing of HTTP: the route hands it a canonical request and a
 * signal that fires when the caller goes away.
 *
 * Billing follows the images, not the request: the caller is charged for the
 * images fal returned, whenever fal completed the job, even if the caller has
 * left; a job that failed or was cancelled before completing is not charged.
 */

export interface GenerateContext {
  /** Ours, the ledger row's id; `clientRequestId` is the caller's `x-request-id`, a label unique within its key. */
  requestId: string;
  clientRequestId?: string | undefined;
  keyId: string;
  /**
   * The request's AbortController: the caller's side aborts it when the caller
   * goes away; the use case aborts it too (deadline, a failed job, shutdown)
   * and its signal goes with every fal call. One is made when none is given.
   */
  controller?: AbortController | undefined;
  /** Origin the caller used, for URLs of images we proxy. */
  publicBaseUrl: string;
  idempotencyKey?: string | undefined;
  /** Called once a fal job exists or may exist (submit answered, or its outcome unknown). */
  onSubmitted?: (() => void) | undefined;
  /**
   * Told each state fal reports for job `jobIndex` of the request's
   * `jobCount` (from 0: n above the per-job maximum runs several), repeats
   * included, for callers who follow along (streaming: src/images/progress.ts
   * keeps the changes).
   */
  onJobStatus?: ((jobIndex: number, jobCount: number, status: FalJobStatus) => void) | undefined;
}

export type ImagesResponseBody = ImagesResponse;

export interface GenerateOutcome {
  body: ImagesResponseBody;
  charge: Charge;
  falRequestIds: string[];
}

export interface ImageServiceDeps {
  fal: FalGateway;
  ledger: RequestLedger;
  /** Settles or closes the request's row (src/images/closing.ts, `createSettlement`). */
  settlement: Settlement;
  /** The requests this process is working on, shared with `settlement` (a close retried in the background counts). */
  inFlight: InFlight;
  media: Media;
  markup: Markup;
  requestTimeoutMs: number;
  /** How long a submit may take (job-runner.ts, `JobRunnerDeps`). */
  submitTimeoutMs: number;
  logger: Logger;
  now?: () => number;
  metrics?: Metrics;
  /** Fires on shutdown after the grace period: abandon waits, cancel jobs. */
  shutdownSignal?: AbortSignal;
  /** Turns local LoRA paths into fal storage URLs (uploading once); absent = inputs go to fal as they are. */
  loras?: LoraResolver;
  /** This process's lease (src/metering/lease-store.ts): no request is taken while it is not known live. */
  lease?: { readonly id: string; valid(): boolean } | undefined;
}

export interface ImageService {
  generate(req: CanonicalRequest, ctx: GenerateContext): Promise<GenerateOutcome>;
  /** Whether this process is working on the request (answering it, or closing it in the background): reconciliation leaves it alone. */
  inFlight(requestId: string): boolean;
}

/** fal fields whose name differs from what an OpenAI caller may have sent. */
const OPENAI_ALIASES: Record<string, string> = { num_images: 'n', image_size: 'size' };

export function createImageService(deps: ImageServiceDeps): ImageService {
  const now = deps.now ?? Date.now;
  const shutdown = new Shutdown(deps.shutdownSignal);
  const inFlight = deps.inFlight;
  return {
    async generate(req, ctx) {
      deps.metrics?.jobsInFlight.inc();
      // Before the reservation: no reconciliation round of this process may take the request for a leftover.
      inFlight.enter(ctx.requestId);
      const stop = new RequestStop(ctx.controller, shutdown);
      try {
        return await generate(deps, now, req, ctx, stop);
      } catch (err) {
        if (!(err instanceof MeteringUnavailable)) throw err;
        deps.logger.error({ err: err.cause, what: err.what, request_id: ctx.requestId, client_request_id: ctx.clientRequestId }, 'ledger write failed');
        if (!err.unavailable) throw storageFailed(err.cause);
        throw meteringUnavailable(err.what !== 'reserve');
      } finally {
        stop.dispose();
        inFlight.leave(ctx.requestId);
        deps.metrics?.jobsInFlight.dec();
      }
    },
    inFlight: (requestId) => inFlight.has(requestId),
  };
}

/** A request between its reservation and its answer. */
interface Run {
  req: CanonicalRequest;
  pricing: { promptExpansion: boolean; markup: Markup };
  baseSeed: number | undefined;
  /** Our id of each job (its ledger row), in job order. */
  jobIds: readonly string[];
  startedAt: number;
}

/**
 * The three steps, each its own function: while the jobs wait (minutes,
 * thousands at once) only this small frame and the job runner's are
 * suspended, not the locals of preparing and finishing.
 */
async function generate(deps: ImageServiceDeps, now: () => number, canonical: CanonicalRequest, ctx: GenerateContext, stop: RequestStop): Promise<GenerateOutcome> {
  const run = await prepare(deps, canonical, ctx, stop);
  return finish(deps, now, run, await runJobs(deps, run, ctx, stop), ctx, stop);
}

/** LoRA uploads, the reservation and the deadline. */
async function prepare(deps: ImageServiceDeps, canonical: CanonicalRequest, ctx: GenerateContext, stop: RequestStop): Promise<Run> {
  // Before anything is reserved or submitted: a refused LoRA path is the caller's 400, and an upload is not a billable job.
  const falInput = deps.loras ? await deps.loras.resolve(canonical.falInput, stop.signal) : canonical.falInput;
  const req = falInput === canonical.falInput ? canonical : { ...canonical, falInput };
  const pricing = { promptExpansion: req.promptExpansion, markup: deps.markup };
  const baseSeed = baseSeedFor(req);
  // The ledger keeps what identifies each job's input on its row; runJobs builds the same inputs again (same seed), so none is held while the jobs wait.
  const jobIds = await reserve(deps, req, ctx, encodePricing(pricing), jobInputs(req, baseSeed));
  // The deadline bounds the fal work: a LoRA upload and the reservation before it are not part of it.
  stop.startDeadline(deps.requestTimeoutMs);
  return { req, pricing, baseSeed, jobIds, startedAt: performance.now() };
}

/**
 * Every job to its end. A job whose ledger write fails stops the others, and
 * the request waits for all of them before it answers: none is left running
 * unwatched.
 */
async function runJobs(deps: ImageServiceDeps, run: Run, ctx: GenerateContext, stop: RequestStop): Promise<JobOutcome[]> {
  const { endpoint } = run.req.model;
  const inputs = jobInputs(run.req, run.baseSeed);
  const count = inputs.length;
  const onJobStatus = ctx.onJobStatus;
  const jobs = inputs.map((input, i) =>
    runJob(
      deps,
      { jobId: run.jobIds[i]!, requestId: ctx.requestId, clientRequestId: ctx.clientRequestId, model: run.req.model, promptExpansion: run.req.promptExpansion, endpoint, onSubmitted: ctx.onSubmitted, onStatus: onJobStatus && ((st: FalJobStatus) => onJobStatus(i, count, st)) },
      input,
      stop,
    ),
  );
  try {
    return await Promise.all(jobs);
  } catch (err) {
    stop.stop('sibling');
    await Promise.allSettled(jobs);
    throw err;
  }
}

/**
 * Every job has a state: the job-state rules decide the answer and the
 * request's ledger row. Images are charged only once their answer is built:
 * a request answered with an error is closed uncharged, whatever fal billed.
 */
async function finish(deps: ImageServiceDeps, now: () => number, run: Run, outcomes: JobOutcome[], ctx: GenerateContext, stop: RequestStop): Promise<GenerateOutcome> {
  const { req } = run;
  const log = deps.logger.child({ request_id: ctx.requestId, client_request_id: ctx.clientRequestId, model: req.model.id });
  const decision = decideRequest(outcomes, stop.reason());
  // The completed jobs, in job order as `decision.completed` lists them, each under its ledger id.
  const completed = outcomes.flatMap((o, i) => (o.at === 'completed' ? [completedJob(o.result, run.jobIds[i]!)] : []));
  const caller = decision.caller;
  const w = decision.ledger;
  if (caller.answer === 'images') return answerImages(deps, now, run, ctx, decision.completed, completed, log);
  if (w.write === 'settle') {
    // No answer is written (the caller left): a settle that changed nothing only needs to know it was not taken over.
    const s = await settle(deps, req, ctx.requestId, run.pricing, completed, log);
    if (!s.settled) deps.settlement.closedBy(s.request, log);
  } else if (w.write === 'close') {
    const how = await deps.settlement.closeUncharged({ requestId: ctx.requestId, model: req.model, pricing: run.pricing, close: w, jobs: completed }, log);
    if (how === 'settled_elsewhere') {
      const answer = await answerChargedElsewhere(deps, now, run, ctx, decision.completed, completed, log);
      if (answer) return answer;
    }
  }
  if (caller.answer === 'metering_unavailable') throw meteringUnavailable(true);
  // Only a failure needs to know which name the caller gave each field.
  const fieldOrigins = Object.fromEntries(Object.keys(req.falInput).map((f) => [f, OPENAI_ALIASES[f] && req.sentFields.includes(OPENAI_ALIASES[f]!) ? OPENAI_ALIASES[f]! : f]));
  throw deps.fal.callerError(caller.error, { submitted: !caller.retrySafe, fieldOrigins, abortReason: stop.reason() });
}

/** Every job completed: the images are answered once their charge is committed. */
async function answerImages(deps: ImageServiceDeps, now: () => number, run: Run, ctx: GenerateContext, results: readonly FalResult[], completed: readonly CompletedJob[], log: Logger): Promise<GenerateOutcome> {
  const { req } = run;
  const body = await buildAnswer(deps, now, run, ctx, results, completed, log);
  let settled: Awaited<ReturnType<typeof settle>>;
  try {
    settled = await settle(deps, req, ctx.requestId, run.pricing, completed, log);
  } catch (err) {
    // The caller is told 503: those images are never to be charged, so the close is kept and retried until the ledger is back.
    await deps.settlement.closeLater({ requestId: ctx.requestId, model: req.model, pricing: run.pricing, close: { status: 'failed', errorCode: 'metering_unavailable' }, jobs: completed }, log);
    throw err;
  }
  if (!settled.settled) {
    // Settled first by a reconciliation that took the caller for gone: the same jobs, so the same charge, unless closed uncharged.
    if (deps.settlement.closedBy(settled.request, log) === 'closed') {
      log.error({ status: settled.request.status }, 'another process closed the request uncharged before its images were charged; they are not delivered');
      throw meteringUnavailable(true);
    }
    if (settled.request.chargeMicros !== settled.charge.micros) log.error({ charge_micros: String(settled.request.chargeMicros), answered_micros: String(settled.charge.micros) }, 'another process settled the request at another charge');
    else log.info('another process settled the request first, at the same charge');
  }
  observeDelivered(deps, run, results, settled);
  return { body, charge: settled.charge, falRequestIds: results.map((r) => r.falRequestId) };
}

/**
 * The request was to be answered with an error, but another process (a
 * reconciliation that took the caller for gone) had already settled it on
 * fal's completed jobs. When that charge is exactly the completed images
 * in hand, they are the answer: a caller charged is a caller answered 200.
 */
async function answerChargedElsewhere(deps: ImageServiceDeps, now: () => number, run: Run, ctx: GenerateContext, results: readonly FalResult[], completed: readonly CompletedJob[], log: Logger): Promise<GenerateOutcome | undefined> {
  const row = await deps.ledger.getRequest(ctx.requestId);
  const charge = callerChargeForJobs(run.req.model, completed.map((j) => j.images), run.pricing.promptExpansion, run.pricing.markup);
  if (completed.length === 0 || row?.chargeMicros !== charge.micros) {
    log.error({ charge_micros: String(row?.chargeMicros) }, 'another process charged a request this process answers with an error');
    return undefined;
  }
  log.warn('another process settled the request on its completed jobs first; answered with those images');
  const body = await buildAnswer(deps, now, run, ctx, results, completed, log);
  return { body, charge, falRequestIds: results.map((r) => r.falRequestId) };
}

function completedJob(r: FalResult, jobId: string): CompletedJob {
  return { jobId, falRequestId: r.falRequestId, otherFalId: r.otherFalId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits };
}

/**
 * The OpenAI answer for the completed jobs. If the images cannot be
 * delivered the request is closed uncharged (fal's cost recorded) and the
 * caller told not to retry: fal billed the jobs.
 */
async function buildAnswer(deps: ImageServiceDeps, now: () => number, run: Run, ctx: GenerateContext, results: readonly FalResult[], completed: readonly CompletedJob[], log: Logger): Promise<ImagesResponseBody> {
  const { req } = run;
  try {
    // The charge is known before settling: the answer carries it.
    const charge = callerChargeForJobs(req.model, completed.map((j) => j.images), run.pricing.promptExpansion, run.pricing.markup);
    return await imagesResponse({ req, results, charge, baseSeed: run.baseSeed, nowMs: now(), publicBaseUrl: ctx.publicBaseUrl, tenant: ctx.keyId, requestId: ctx.requestId }, deps.media);
  } catch (err) {
    if (!(err instanceof MediaError)) throw err;
    log.error({ err: err.message }, 'could not deliver images');
    await deps.settlement.closeUncharged({ requestId: ctx.requestId, model: req.model, pricing: run.pricing, close: { status: 'failed', errorCode: 'upstream_media_error' }, jobs: completed }, log);
    throw upstreamError('The generated images could not be retrieved from the provider.', { code: 'upstream_media_error', shouldRetry: false });
  }
}

function observeDelivered(deps: ImageServiceDeps, run: Run, results: readonly FalResult[], settled: { charge: Charge; upstreamCostMicros: bigint }): void {
  const m = deps.metrics;
  if (!m) return;
  const model = run.req.model.id;
  m.falJobDuration.observe({ model, outcome: 'completed' }, (performance.now() - run.startedAt) / 1000);
  m.imagesDelivered.inc({ model }, results.reduce((n, r) => n + r.output.images.length, 0));
  m.callerChargeUsd.inc({ model }, Number(settled.charge.usd));
  m.upstreamCostUsd.inc({ model }, Number(formatUsd(settled.upstreamCostMicros)));
}

/** The reservation of the request and its jobs: our id of each job, in job order. */
async function reserve(deps: ImageServiceDeps, req: CanonicalRequest, ctx: GenerateContext, pricing: string, inputs: Array<Record<string, unknown>>): Promise<readonly string[]> {
  // A request taken under a lease others may think expired would be settled by them while this process works on it.
  if (deps.lease && !deps.lease.valid()) throw serviceUnavailable('This replica cannot renew its lease on the usage ledger; nothing was done. Try again shortly.', 1, 'lease_expired');
  const maxChargeMicros = maxCharge(req, deps.markup);
  const reserved = await meter('reserve', () =>
    deps.ledger.reserve({
      requestId: ctx.requestId,
      clientRequestId: ctx.clientRequestId ?? null,
      keyId: ctx.keyId,
      model: req.model.id,
      endpoint: req.model.endpoint,
      user: req.user ?? null,
      maxChargeMicros,
      pricing,
      idempotencyKey: ctx.idempotencyKey ?? null,
      jobInputs: inputs,
      estimates: jobEstimates(req),
    }),
  );
  if (reserved.ok) return reserved.jobIds;
  if (reserved.reason === 'request_id_taken') {
    // Only this key's own requests can take its label: another key's never show here.
    throw new ApiError(409, `The x-request-id ${JSON.stringify(ctx.clientRequestId)} was already used for another request of this key; send a new one, or none.`, {
      type: 'conflict_error',
      code: 'request_id_reused',
      param: 'x-request-id',
    });
  }
  deps.metrics?.refusals.inc({ reason: 'budget' });
  throw insufficientQuota(
    `This request may cost up to $${formatUsd(maxChargeMicros)}, which would exceed the key's budget ($${formatUsd(reserved.budgetMicros ?? 0n)} total, $${formatUsd(reserved.spentMicros)} spent, $${formatUsd(reserved.reservedMicros)} set aside for requests in flight, which comes back as they finish, or within seconds where it is not used).`,
  );
}

/** The fal input of each job: n above the model's per-job maximum is split, each job with a seed of its own. */
function jobInputs(req: CanonicalRequest, baseSeed: number | undefined): Array<Record<string, unknown>> {
  const perJob = req.model.maxImagesPerJob;
  return splitIntoJobs(req.numImages, perJob).map((k, i) => ({
    ...req.falInput,
    num_images: k,
    ...(baseSeed !== undefined ? { seed: jobSeed(baseSeed, i, perJob) } : {}),
    sync_mode: req.responseFormat === 'b64_json',
  }));
}

/**
 * Jobs of one request must not draw the same images: each gets its own seed,
 * derived from the caller's (or, when none was given and there are several
 * jobs, a random one).
 */
function baseSeedFor(req: CanonicalRequest): number | undefined {
  if (typeof req.falInput.seed === 'number') return req.falInput.seed;
  return splitIntoJobs(req.numImages, req.model.maxImagesPerJob).length > 1 ? randomSeed() : undefined;
}

async function settle(deps: ImageServiceDeps, req: CanonicalRequest, requestId: string, pricing: { promptExpansion: boolean; markup: Markup }, jobs: readonly CompletedJob[], log: Logger) {
  const out = await meter('settle', () => deps.settlement.settle(req.model, requestId, pricing, jobs));
  for (const d of out.disagreements) {
    log.warn({ fal_request_id: d.falRequestId, units_estimate: d.unitsEstimate, units_fal: d.unitsFal }, 'fal billed a different quantity than our estimate');
    deps.metrics?.unitsDisagreements.inc({ model: req.model.id });
  }
  return out;
}

/**
 * Fail closed: what cannot be metered is never served. A ledger that cannot
 * be reached is this 503; one that refused the write is storageFailed's 500.
 * Once a fal job may exist (`jobsMayExist`), a retry could start another
 * billable one, so none is invited.
 */
function meteringUnavailable(jobsMayExist: boolean): ApiError {
  if (!jobsMayExist) return serviceUnavailable('Usage metering is unavailable; the request was not processed.', 5, 'metering_unavailable');
  return new ApiError(503, 'Usage metering is unavailable; the request was not completed.', { type: 'service_unavailable', code: 'metering_unavailable', shouldRetry: false });
}

/** Fail closed: what cannot be metered is never served. */
async function meter<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new MeteringUnavailable(what, err);
  }
}

/** fal seeds are positive integers; keep derived ones in range by wrapping. */
const SEED_SPACE = 2 ** 31 - 1;

function randomSeed(): number {
  return 1 + Math.floor(Math.random() * (SEED_SPACE - 1));
}

/**
 * Job i of a fanned-out request starts `i × perJob` seeds after the base, so
 * that if fal seeds image k of a job with seed + k, no two images share a seed.
 */
export function jobSeed(base: number, i: number, perJob: number): number {
  if (i === 0) return base;
  return ((base - 1 + i * perJob) % SEED_SPACE) + 1;
}
