import type { Logger } from 'pino';
import { ApiError, insufficientQuota, serviceUnavailable, upstreamError } from '../errors.js';
import { FalCallError, jobFailed, type FalGateway, type FalJobStatus, type FalResult } from '../fal/gateway.js';
import type { CanonicalRequest } from './normalize.js';
import type { Media } from './media.js';
import type { LoraResolver } from './loras.js';
import { MediaError } from './media.js';
import { b64Item } from './b64-item.js';
import { inlineDataUri } from '../fal/inline-images.js';
import { mapFalError } from './upstream-errors.js';
import { maxCharge, splitIntoJobs } from '../metering/pricing.js';
import { encodePricing, settleCompleted, type BillingEvents } from '../metering/settlement.js';
import { formatUsd, type Markup } from '../metering/money.js';
import type { Ledger } from '../metering/ledger.js';
import type { Metrics } from '../metrics.js';
import type { ImagesResponse } from '../schemas/images-response.js';
import { DeadlineQueue, type Expiring } from '../deadline-queue.js';
import type { AbortLike, AbortListener } from '../abort-like.js';

/**
 * The use case: one caller request → one fal job → one OpenAI-shaped
 * response, metered. It knows nothing of HTTP: the route hands it a canonical
 * request and a signal that fires when the caller goes away.
 *
 * Billing follows the images, not the request: the caller is charged for the
 * images fal returned, whenever fal completed the job, even if the caller has
 * left; a job that failed or was cancelled before completing is not charged.
 */

export interface GenerateContext {
  requestId: string;
  keyId: string;
  /**
   * Tells when the caller disconnects: a signal, or (cheaper, for the HTTP
   * route, where thousands of callers wait at once) a `CallerLink`.
   */
  callerSignal: AbortSignal | CallerLink;
  /** Origin the caller used, for URLs of images we proxy. */
  publicBaseUrl: string;
  idempotencyKey?: string;
  /** Called once a fal job exists or may exist (submit answered, or its outcome is unknown). */
  onSubmitted?: () => void;
  /** Told each change of a fal job's state, for callers who follow along (streaming). */
  onProgress?: (progress: GenerateProgress) => void;
}

/**
 * The caller's end of a request, as the HTTP layer sees it: an AbortSignal
 * with its listener maps for every waiting request was most of what a
 * caller cost us. The link calls its one watcher when the caller goes.
 */
export interface CallerLink {
  /** The reason, once the caller has gone; undefined while it is there. */
  readonly goneReason: unknown;
  /** `watcher.callerGone(reason)` is called once if the caller goes (never if already gone: check `goneReason`). */
  watch(watcher: CallerWatcher | undefined): void;
}

export interface CallerWatcher {
  callerGone(reason: unknown): void;
}

export interface GenerateProgress {
  /** Which of the request's fal jobs, from 0 (n above the per-job maximum runs several). */
  jobIndex: number;
  jobCount: number;
  status: 'queued' | 'in_progress' | 'completed';
  /** Jobs ahead of this one, when fal said. */
  queuePosition: number | null;
}

export type ImagesResponseBody = ImagesResponse;
type ImageItem = ImagesResponse['data'][number];

export interface GenerateOutcome {
  body: ImagesResponseBody;
  headers: Record<string, string>;
  falRequestId: string;
}

export interface ImageServiceDeps {
  fal: FalGateway;
  ledger: Ledger;
  media: Media;
  markup: Markup;
  requestTimeoutMs: number;
  logger: Logger;
  now?: () => number;
  metrics?: Metrics;
  /** Fires on shutdown after the grace period: abandon waits, cancel jobs. */
  shutdownSignal?: AbortSignal;
  /** Set when the billing webhook is on: settlements then write an event for it. */
  billingEvents?: BillingEvents | undefined;
  /** Turns local LoRA paths into fal storage URLs (uploading once); absent = inputs go to fal as they are. */
  loras?: LoraResolver;
}

export interface ImageService {
  generate(req: CanonicalRequest, ctx: GenerateContext): Promise<GenerateOutcome>;
}

/** fal fields whose name differs from what an OpenAI caller may have sent. */
const OPENAI_ALIASES: Record<string, string> = { num_images: 'n', image_size: 'size' };

export function createImageService(deps: ImageServiceDeps): ImageService {
  const now = deps.now ?? Date.now;
  const deadlines = DeadlineQueue.forLength(deps.requestTimeoutMs);

  async function ledgerCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      deps.logger.error({ err, what }, 'ledger write failed');
      // Fail closed: never serve what cannot be metered.
      throw serviceUnavailable('Usage metering is unavailable; the request was not processed.', 5, 'metering_unavailable');
    }
  }

  // Requests whose fal work is under way, for shutdown to abort: one Set
  // entry each, instead of a listener (or a composite signal) per request on
  // the process-long shutdown signal.
  const live = new Set<RequestAbort>();
  deps.shutdownSignal?.addEventListener('abort', () => {
    for (const r of live) r.abort('shutdown', deps.shutdownSignal!.reason);
  }, { once: true });

  /**
   * One request's fal work, as a record rather than closures: while its jobs
   * wait (seconds to minutes, thousands at once) a request holds this object,
   * the `generate` frame and one `runJob` frame per job, and nothing else of
   * ours. Its methods are shared by every request.
   */
  class RequestRun {
    readonly log: RequestLog;
    readonly pricing: { promptExpansion: boolean; markup: Markup };
    readonly progress: ((jobIndex: number, st: FalJobStatus, jobCount: number) => void) | undefined;
    baseSeed: number | undefined;
    submittedAt = 0;

    constructor(
      public req: CanonicalRequest,
      readonly ctx: GenerateContext,
      readonly cut: RequestAbort,
    ) {
      this.log = new RequestLog(deps.logger, ctx.requestId, req.model.id);
      this.pricing = { promptExpansion: req.promptExpansion, markup: deps.markup };
      this.progress = ctx.onProgress ? progressReporter(ctx.onProgress, this.log) : undefined;
    }

    /** LoRA uploads and the reservation; the fal inputs of the request's jobs. */
    async prepare(): Promise<Array<Record<string, unknown>>> {
      const { ctx, cut } = this;
      let req = this.req;
      // Before anything is reserved or submitted: a refused LoRA path is the
      // caller's 400, and an upload is not a billable job.
      if (deps.loras) {
        // The same input back means no local LoRA: no copy of the request to keep for the job's whole wait.
        const falInput = await deps.loras.resolve(req.falInput, cut);
        if (falInput !== req.falInput) this.req = req = { ...req, falInput };
      }
      const reserve = maxCharge(req, deps.markup);
      const reserved = await ledgerCall('reserve', () =>
        deps.ledger.reserve({
          requestId: ctx.requestId,
          keyId: ctx.keyId,
          model: req.model.id,
          endpoint: req.model.endpoint,
          user: req.user ?? null,
          maxChargeMicros: reserve,
          pricing: encodePricing(this.pricing),
          idempotencyKey: ctx.idempotencyKey ?? null,
        }),
      );
      if (!reserved.ok && reserved.reason === 'request_id_taken') {
        // The id keys the usage row and the billing event a receiver de-duplicates on: two requests can never share it.
        throw new ApiError(409, `The x-request-id ${JSON.stringify(ctx.requestId)} was already used for another request; send a new one, or none.`, {
          type: 'conflict_error',
          code: 'request_id_reused',
          param: 'x-request-id',
        });
      }
      if (!reserved.ok) {
        deps.metrics?.refusals.inc({ reason: 'budget' });
        throw insufficientQuota(
          `This request may cost up to $${formatUsd(reserve)}, which would exceed the key's budget ($${formatUsd(reserved.budgetMicros ?? 0n)} total, $${formatUsd(reserved.spentMicros)} spent, $${formatUsd(reserved.reservedMicros)} reserved by requests in flight).`,
        );
      }

      // The deadline counts from here, as it always has: a LoRA upload and the
      // reservation before it are not the fal work it bounds.
      cut.startDeadline(deadlines);

      const perJob = req.model.maxImagesPerJob;
      const counts = splitIntoJobs(req.numImages, perJob);
      const callerSeed = typeof req.falInput.seed === 'number' ? req.falInput.seed : undefined;
      // Jobs of one request must not draw the same images: each gets its own
      // seed, derived from the caller's (or, when none was given, a random one).
      const baseSeed = (this.baseSeed = callerSeed ?? (counts.length > 1 ? randomSeed() : undefined));
      this.submittedAt = performance.now();
      return counts.map((k, i) => ({
        ...req.falInput,
        num_images: k,
        ...(baseSeed !== undefined ? { seed: jobSeed(baseSeed, i, perJob) } : {}),
        sync_mode: req.responseFormat === 'b64_json',
      }));
    }

    /**
     * A refused submit attempt that fal nonetheless turned into a job: kept in
     * the ledger as a `duplicate` job so the upstream cost it may incur is
     * visible, never billed to the caller.
     */
    async recordStrays(ids: string[]): Promise<void> {
      for (const id of ids) {
        this.log.warn({ fal_request_id: id }, 'fal made a job on a refused submit attempt; recorded as duplicate');
        deps.metrics?.refusals.inc({ reason: 'duplicate_fal_job' });
        await ledgerCall('duplicate', () => deps.ledger.markDuplicate({ requestId: this.ctx.requestId, falRequestId: id, endpoint: this.req.model.endpoint }));
      }
    }

    /** One failed job fails the request: the others are cancelled (and billed only if fal completed them anyway). */
    async runJob(input: Record<string, unknown>, jobIndex: number, jobCount: number): Promise<JobOutcome> {
      const { ctx, cut, log } = this;
      const endpoint = this.req.model.endpoint;
      // A real signal that aborts with the request (RequestAbort.signal).
      const jobSignal = cut.signal;
      let falRequestId: string;
      let strayIds: string[];
      try {
        ({ falRequestId, strayIds } = await deps.fal.submit(endpoint, input, { signal: jobSignal }));
        // Sent: a job may wait for minutes, and nothing after the submit reads its input.
        input = SENT;
        ctx.onSubmitted?.();
        this.progress?.(jobIndex, { status: 'IN_QUEUE' }, jobCount);
      } catch (err) {
        const fe = asFalError(err);
        await this.recordStrays(fe.strayIds);
        if (fe.ambiguous) ctx.onSubmitted?.();
        cut.abort('sibling');
        return { error: fe, open: fe.ambiguous, noId: fe.ambiguous };
      }
      try {
        await deps.ledger.recordSubmit({ requestId: ctx.requestId, falRequestId, endpoint });
      } catch (err) {
        // The job exists but we could not write its id: reconciliation can
        // only find it as an orphan. Stop the rest.
        log.error({ err, fal_request_id: falRequestId }, 'ledger write failed after submit');
        cut.abort('sibling');
        return { error: new FalCallError('ledger unavailable', { phase: 'submit', kind: 'aborted' }), open: true, noId: true, metering: true };
      }
      log.debug({ fal_request_id: falRequestId }, 'fal job submitted');
      await this.recordStrays(strayIds);
      try {
        // A closure for progress only when someone follows it (streaming): a waiting job keeps what it passes here.
        const progress = this.progress;
        await deps.fal.waitForCompletion(endpoint, falRequestId, { signal: jobSignal, onStatus: progress && ((st) => progress(jobIndex, st, jobCount)) });
        return { result: await deps.fal.result(endpoint, falRequestId, { signal: jobSignal }) };
      } catch (err) {
        const fe = asFalError(err);
        if (fe.kind !== 'aborted') cut.abort('sibling');
        const after = fe.kind === 'aborted' ? await cancelOrCollect(this.req, falRequestId, log) : null;
        if (after?.result) return { result: after.result };
        if (jobFailed(fe)) {
          // The job ran and failed on its input: fal bills nothing for it.
          await ledgerCall('fail', () => deps.ledger.failJob({ falRequestId, status: 'failed' }));
          return { error: fe, open: false };
        }
        if (after?.cancelled) {
          await ledgerCall('cancel', () => deps.ledger.failJob({ falRequestId, status: 'cancelled' }));
          return { error: fe, open: false };
        }
        // Cancel refused, fal unreachable: left open for reconciliation, which
        // asks fal what became of the job, so a job fal finishes anyway is billed.
        return { error: fe, open: true };
      }
    }

    /** Every job has an outcome: bill, release or leave open, then answer or throw. */
    async finish(outcomes: JobOutcome[]): Promise<GenerateOutcome> {
      const { req, ctx, cut, log } = this;
      const results = outcomes.flatMap((o) => ('result' in o ? [o.result] : []));
      const failures = outcomes.filter((o): o is JobFailure => 'error' in o);
      if (failures.length > 0) {
        const reason = cut.cause();
        if (failures.some((f) => f.metering)) throw serviceUnavailable('Usage metering is unavailable; the request was not completed.', 5, 'metering_unavailable');
        if (failures.every((f) => !f.open)) {
          // Every job is accounted for: bill what completed, release the rest.
          if (results.length > 0) await this.settle(results);
          else await ledgerCall('release', () => deps.ledger.release({ requestId: ctx.requestId, status: reason ? 'released' : 'failed', errorCode: failureCode(failures[0]!.error, reason) }));
        } else if (outcomes.every((o) => 'error' in o && o.noId)) {
          // fal may have created jobs we never learnt the ids of: keep the
          // reservation visible as an orphan instead of quietly releasing it.
          await ledgerCall('orphan', () => deps.ledger.markOrphaned(ctx.requestId));
          log.error({ errors: failures.map((f) => f.error.message) }, 'submit outcome unknown; request marked orphaned');
        }
        // The root cause, not a sibling we aborted because of it.
        const primary = failures.find((f) => f.error.kind !== 'aborted') ?? failures[0]!;
        const submitted = outcomes.some((o) => 'result' in o || o.open || o.error.phase !== 'submit');
        // Only a failure needs to know which name the caller gave each field.
        const fieldOrigins = Object.fromEntries(
          Object.keys(req.falInput).map((f) => [f, OPENAI_ALIASES[f] && req.sentFields.includes(OPENAI_ALIASES[f]!) ? OPENAI_ALIASES[f]! : f]),
        );
        throw mapFalError(primary.error, { submitted, fieldOrigins, abortReason: reason });
      }

      const settled = await this.settle(results);
      const charge = settled.charge;
      const images = results.flatMap((r) => r.output.images);
      const m = deps.metrics;
      if (m) {
        m.falJobDuration.observe({ model: req.model.id, outcome: 'completed' }, (performance.now() - this.submittedAt) / 1000);
        m.imagesDelivered.inc({ model: req.model.id }, images.length);
        m.callerChargeUsd.inc({ model: req.model.id }, Number(charge.usd));
        m.upstreamCostUsd.inc({ model: req.model.id }, Number(formatUsd(settled.upstreamCostMicros)));
      }

      let data: ImageItem[];
      try {
        // Base64 stays as the Buffers it came in (fal's result body, or our
        // download of it) until the route writes them: see b64-item.ts.
        data = req.responseFormat === 'b64_json'
          ? await Promise.all(results.flatMap((r) => r.output.images.map(async (i) => b64Item(r.inlineImages?.get(i.url) ?? (await deps.media.base64(i.url))))))
          : results.flatMap((r) => r.output.images.map((i) => ({ url: deps.media.toClientUrl(inlineAsUrl(r, i.url), ctx.publicBaseUrl) })));
      } catch (err) {
        if (!(err instanceof MediaError)) throw err;
        log.error({ err: err.message }, 'could not deliver images');
        throw upstreamError('The generated images could not be retrieved from the provider.', { code: 'upstream_media_error', shouldRetry: false });
      }

      const nsfw = results.flatMap((r) => r.output.images.map((_, k) => r.output.has_nsfw_concepts?.[k] === true));
      const falIds = results.map((r) => r.falRequestId);
      const firstSeed = results[0]?.output.seed;
      const body: ImagesResponseBody = {
        created: Math.floor(now() / 1000),
        data,
        output_format: req.outputFormat,
        size: `${req.size.width}x${req.size.height}`,
        meta: {
          usage: { credits_used: charge.credits, tokens_used: charge.credits, cost_usd: charge.usd },
          seed: this.baseSeed ?? (typeof firstSeed === 'number' ? firstSeed : null),
          images: images.map((i, k) => ({ width: i.width, height: i.height, content_type: i.content_type, has_nsfw_concept: nsfw[k] === true })),
          fal_request_id: falIds[0]!,
          fal_request_ids: falIds,
        },
      };
      return {
        body,
        falRequestId: falIds[0]!,
        headers: { 'x-usage-cost-usd': charge.usd, 'x-usage-credits': String(charge.credits), 'x-fal-request-id': falIds.join(', ') },
      };
    }

    async settle(done: FalResult[]) {
      const { req, log } = this;
      const out = await ledgerCall('settle', () =>
        settleCompleted(
          deps.ledger,
          req.model,
          this.ctx.requestId,
          this.pricing,
          done.map((r) => ({ falRequestId: r.falRequestId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits })),
          { billingEvents: deps.billingEvents },
        ),
      );
      for (const d of out.disagreements) {
        log.warn({ fal_request_id: d.falRequestId, units_estimate: d.unitsEstimate, units_fal: d.unitsFal }, 'fal billed a different quantity than our estimate');
        deps.metrics?.unitsDisagreements.inc({ model: req.model.id });
      }
      return out;
    }
  }

  return {
    async generate(req, ctx) {
      deps.metrics?.jobsInFlight.inc();
      // One controller for the request's fal work: the caller leaving, the
      // deadline, shutdown and a failed sibling job each abort it (see RequestAbort).
      const cut = new RequestAbort(ctx.callerSignal, live, deps.shutdownSignal);
      try {
        const run = new RequestRun(req, ctx, cut);
        const inputs = await run.prepare();
        const n = inputs.length;
        // The usual single job is awaited as it is: Promise.all would add its own promise and closures to every wait.
        const outcomes = n === 1
          ? [await run.runJob(inputs.pop()!, 0, 1)]
          : await Promise.all(inputs.splice(0, n).map((input, i) => run.runJob(input, i, n)));
        return await run.finish(outcomes);
      } finally {
        cut.dispose();
        deps.metrics?.jobsInFlight.dec();
      }
    },
  };

  /**
   * Our wait was cut short. Cancel the job; if fal says it already completed,
   * it will bill us, so fetch the result and bill (and, if the caller is still
   * there, deliver) it rather than lose it.
   */
  async function cancelOrCollect(req: CanonicalRequest, falRequestId: string, log: RequestLog): Promise<{ result?: FalResult; cancelled: boolean }> {
    const endpoint = req.model.endpoint;
    const outcome = await deps.fal.cancel(endpoint, falRequestId, { signal: AbortSignal.timeout(10_000) });
    log.info({ fal_request_id: falRequestId, outcome }, 'fal job cancel');
    if (outcome !== 'already_completed' && outcome !== 'cancellation_requested') return { cancelled: false };
    // A 202 is only a request: the job may still finish (and be billed).
    // Confirm briefly; whatever stays unknown is left to reconciliation.
    const confirmBy = Date.now() + CANCEL_CONFIRM_MS;
    try {
      while ((await deps.fal.status(endpoint, falRequestId, { signal: AbortSignal.timeout(5_000) })).status !== 'COMPLETED') {
        if (Date.now() > confirmBy) return { cancelled: false };
        await new Promise((r) => setTimeout(r, 100));
      }
      return { result: await deps.fal.result(endpoint, falRequestId, { signal: AbortSignal.timeout(30_000) }), cancelled: false };
    } catch (err) {
      if (err instanceof FalCallError && jobFailed(err)) return { cancelled: true };
      log.warn({ err: (err as Error).message, fal_request_id: falRequestId }, 'job state unknown after cancel; left for reconciliation');
      return { cancelled: false };
    }
  }
}

const PROGRESS_STATUS = { IN_QUEUE: 'queued', IN_PROGRESS: 'in_progress', COMPLETED: 'completed' } as const;
const PROGRESS_RANK = { queued: 0, in_progress: 1, completed: 2 } as const;

/**
 * fal repeats a job's state on every poll and stream tick; a listener hears
 * only changes, and never a step back (a late poll answering IN_QUEUE after
 * the stream said IN_PROGRESS). A listener that throws must not fail a job
 * that is being billed.
 */
function progressReporter(listener: (p: GenerateProgress) => void, log: RequestLog) {
  const last: Array<GenerateProgress | undefined> = [];
  return (jobIndex: number, st: FalJobStatus, jobCount: number): void => {
    const p: GenerateProgress = { jobIndex, jobCount, status: PROGRESS_STATUS[st.status], queuePosition: st.queuePosition ?? null };
    const prev = last[jobIndex];
    if (prev && (PROGRESS_RANK[p.status] < PROGRESS_RANK[prev.status] || (prev.status === p.status && (p.queuePosition === null || p.queuePosition === prev.queuePosition)))) return;
    last[jobIndex] = p;
    try {
      listener(p);
    } catch (err) {
      log.warn({ err }, 'progress listener failed');
    }
  };
}

/**
 * fal sent an image inline although we asked for a URL (no sync_mode): the
 * caller gets the data URI fal sent, as before images were cut out of results.
 */
function inlineAsUrl(r: FalResult, url: string): string {
  const inline = r.inlineImages?.get(url);
  return inline ? inlineDataUri(inline) : url;
}

/** What a job's input becomes once it is submitted (see runJob). */
const SENT: Record<string, unknown> = Object.freeze({});

/** How long we wait for fal to confirm a cancel before leaving it to reconciliation. */
const CANCEL_CONFIRM_MS = 2_000;

type JobFailure = { error: FalCallError; open: boolean; noId?: boolean; metering?: boolean };
type JobOutcome = { result: FalResult } | JobFailure;

function failureCode(err: FalCallError, reason: string | undefined): string {
  if (reason) return reason;
  return err.phase === 'submit' ? `submit_${err.status ?? err.kind}` : `job_failed_${err.status ?? err.kind}`;
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

function asFalError(err: unknown): FalCallError {
  if (err instanceof FalCallError) return err;
  if (err instanceof ApiError) throw err;
  return new FalCallError(`unexpected: ${(err as Error)?.message}`, { phase: 'other', kind: 'bad_response', cause: err });
}

/**
 * Why a request's fal work was cut short, and what tells its fal calls so.
 * It aborts on whichever comes first of: the caller leaving (a watcher on its
 * link, or one listener on its signal), the deadline (an entry in a shared
 * DeadlineQueue, not a timer of its own), shutdown (an entry in the service's
 * set of live requests) and a sibling job failing.
 *
 * It is itself the abort signal of the request's fal calls (an AbortLike:
 * aborted, reason, listeners), not an AbortController: thousands of requests
 * wait at once, and a controller's signal with its listener maps and hidden
 * class cost each ~0.8 KB. Each fal call gets a real signal of its own from
 * the transport while it runs; `signal` makes one for callers that need a real
 * AbortSignal (LoRA uploads).
 *
 * Every cause is remembered, not just the first: a caller who leaves after a
 * sibling failed is still reported as gone, as before.
 */
export class RequestAbort implements CallerWatcher, Expiring, AbortLike {
  private isAborted = false;
  private abortReason: unknown = undefined;
  /** Nearly always one (the job's wait); an array only when several jobs or calls listen at once. */
  private listeners: AbortListener | AbortListener[] | undefined;
  private controller: AbortController | undefined;
  private callerGoneFlag = false;
  private deadlineHit = false;
  private shuttingDown = false;
  private deadlines: DeadlineQueue | undefined;
  expiresAt = 0;

  constructor(
    private readonly caller: AbortSignal | CallerLink,
    private readonly live: Set<RequestAbort>,
    shutdownSignal: AbortSignal | undefined,
  ) {
    if (caller instanceof AbortSignal) {
      if (caller.aborted) this.abort('client_gone', caller.reason);
      // An object listener (handleEvent) rather than a closure: nothing per request but the entry.
      else caller.addEventListener('abort', this, { once: true });
    } else if (caller.goneReason !== undefined) this.abort('client_gone', caller.goneReason);
    else caller.watch(this);
    if (shutdownSignal?.aborted) this.abort('shutdown', shutdownSignal.reason);
    else live.add(this);
  }

  get aborted(): boolean {
    return this.isAborted;
  }

  get reason(): unknown {
    return this.abortReason;
  }

  /** A real AbortSignal that follows this one, made on first use. */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.isAborted) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  addEventListener(_type: 'abort', listener: AbortListener): void {
    // As with an AbortSignal, a listener added after the abort is never called.
    if (this.isAborted) return;
    const l = this.listeners;
    if (l === undefined) this.listeners = listener;
    else if (Array.isArray(l)) l.push(listener);
    else this.listeners = [l, listener];
  }

  removeEventListener(_type: 'abort', listener: AbortListener): void {
    const l = this.listeners;
    if (l === listener) this.listeners = undefined;
    else if (Array.isArray(l)) {
      const i = l.indexOf(listener);
      if (i >= 0) l.splice(i, 1);
      if (l.length === 1) this.listeners = l[0];
    }
  }

  /** The caller's signal fired. */
  handleEvent(): void {
    this.abort('client_gone', (this.caller as AbortSignal).reason);
  }

  /** The caller's link says it went away. */
  callerGone(reason: unknown): void {
    this.abort('client_gone', reason);
  }

  /** From now, the request has `deadlines.ms` (the request timeout) to finish its fal work. */
  startDeadline(deadlines: DeadlineQueue): void {
    if (this.deadlines || this.isAborted) return;
    this.deadlines = deadlines;
    deadlines.add(this);
  }

  /** The deadline passed (DeadlineQueue). */
  expire(): void {
    // The same reason AbortSignal.timeout gives.
    this.abort('deadline', new DOMException('The operation was aborted due to timeout', 'TimeoutError'));
  }

  abort(cause: 'client_gone' | 'deadline' | 'shutdown' | 'sibling', reason?: unknown): void {
    if (cause === 'client_gone') this.callerGoneFlag = true;
    else if (cause === 'deadline') this.deadlineHit = true;
    else if (cause === 'shutdown') this.shuttingDown = true;
    if (this.isAborted) return;
    this.isAborted = true;
    // As AbortController.abort() gives when no reason is passed.
    this.abortReason = reason ?? new DOMException('This operation was aborted', 'AbortError');
    this.controller?.abort(this.abortReason);
    const l = this.listeners;
    this.listeners = undefined;
    if (l === undefined) return;
    const event = new Event('abort');
    for (const one of Array.isArray(l) ? l : [l]) {
      // One listener failing must not keep the others from hearing of it (as with EventTarget, the error is reported, not thrown here).
      try {
        if (typeof one === 'function') one.call(this, event);
        else one.handleEvent(event);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  private callerHasGone(): boolean {
    return this.callerGoneFlag || (this.caller instanceof AbortSignal ? this.caller.aborted : this.caller.goneReason !== undefined);
  }

  /** Why the wait was cut, in the order of precedence the error mapping has always used; a sibling's failure is no reason. */
  cause(): 'deadline' | 'client_gone' | 'shutdown' | undefined {
    return this.callerHasGone() ? 'client_gone' : this.deadlineHit ? 'deadline' : this.shuttingDown ? 'shutdown' : undefined;
  }

  /** The request is over: nothing may hold it any more. */
  dispose(): void {
    this.deadlines?.delete(this);
    if (this.caller instanceof AbortSignal) this.caller.removeEventListener('abort', this);
    else this.caller.watch(undefined);
    this.live.delete(this);
    this.listeners = undefined;
  }
}

/**
 * The request's log lines carry its id and model. A pino child per request
 * (its bindings, its own level methods) was kept alive by every waiting job;
 * this is three fields, and the line written is the same.
 */
export class RequestLog {
  constructor(
    private readonly root: Logger,
    private readonly requestId: string,
    private readonly model: string,
  ) {}

  private fields(obj: object): object {
    return { request_id: this.requestId, model: this.model, ...obj };
  }

  debug(obj: object, msg: string): void {
    if (this.root.isLevelEnabled('debug')) this.root.debug(this.fields(obj), msg);
  }

  info(obj: object, msg: string): void {
    if (this.root.isLevelEnabled('info')) this.root.info(this.fields(obj), msg);
  }

  warn(obj: object, msg: string): void {
    if (this.root.isLevelEnabled('warn')) this.root.warn(this.fields(obj), msg);
  }

  error(obj: object, msg: string): void {
    if (this.root.isLevelEnabled('error')) this.root.error(this.fields(obj), msg);
  }
}
