/**
 * The ports of one image request: what the route's handler and the use case
 * (generate.ts, job-runner.ts, response.ts) call on their collaborators,
 * declared here on their own, types only. The composition root
 * (src/service.ts) builds each implementation and hands it in through the
 * factories (`createImageService`, `createApp`):
 *
 * - `ModelRegistry`: src/models/registry.ts (the served entries: src/models/prices.ts; a
 *   request's fields checked and mapped: src/models/request-fields.ts)
 * - `FalGateway`: src/fal/gateway.ts over @fal-ai/client (pooled: src/fal/pooled-gateway.ts)
 * - `RequestLedger`: src/metering/request-ledger.ts over the usage ledger, src/metering/ledger.ts (SQLite or PostgreSQL)
 * - `Settlement`: a request's row settled or closed, src/images/closing.ts over src/metering/settlement.ts
 * - `Media`: each image's b64_json item or URL (fal's inline base64, downloads, signed URLs), src/images/media.ts
 * - `LoraResolver`: local LoRA paths uploaded to fal's storage, src/images/loras.ts
 *
 * The data they carry is imported as types from where it lives.
 */
import type { Logger } from 'pino';
import type { ApiError } from '../errors.js';
import type { FalCallError } from '../fal/errors.js';
import type { MapContext } from '../fal/upstream-errors.js';
import type { CallOptions, FalCancelOutcome, FalJobStatus, FalResult } from '../fal/types.js';
import type { FalListedRequest, ListingWindow } from '../fal/request-listing.js';
import type { CloseJobInput, JobRecord, RequestRecord, RequestWithJobs, ReserveInput, ReserveResult } from '../metering/ledger.js';
import type { RequestPricing } from '../metering/pricing.js';
import type { CompletedJob, SettlementOutcome } from '../metering/settlement.js';
import type { Capability, EditKind, ModelEntry } from '../models/registry.js';
import type { ImageRequestFields, ImageSizeValue } from '../schemas/image-request.js';
import type { SignedFile } from './file-urls.js';
import type { UnchargedClose } from './closing.js';

export interface ModelRegistry {
  /** Exact match on id or declared alias. */
  lookup(name: string): ModelEntry | undefined;
  /** Every model, in declaration order. */
  list(): readonly ModelEntry[];
  /**
   * `body` held to `model`'s own fields: a field the model does not have is
   * refused (naming the models that accept it), then the model's schema
   * runs. A refusal is the caller's 400 naming the field.
   */
  checkBody(model: ModelEntry, body: Record<string, unknown>): void;
  /**
   * The image size a checked body asks for in either dialect (OpenAI's
   * `size` held to the model's `image_size` limits; the same size given in
   * both must agree), else the model's default. A refusal is the 400 naming `size`.
   */
  imageSize(model: ModelEntry, req: ImageRequestFields): ImageSizeValue | 'auto';
  /** Pixels of an `image_size` value. */
  pixels(size: ImageSizeValue): { width: number; height: number };
  /**
   * The hints the caller sent that `model` does not act on, in the order
   * sent: ignored and listed, or the caller's 400 under `strict`, or with
   * `stream` when the hint would change what a stream delivers.
   */
  ignoredHints(model: ModelEntry, body: Record<string, unknown>, opts: { stream: boolean; strict: boolean }): string[];
  /**
   * Exactly what goes to fal for a checked body: the prompt, the
   * price-deciding fields the model has at their values in `pinned`, and the
   * model's other fields the caller sent.
   */
  falInput(model: ModelEntry, body: Record<string, unknown>, pinned: Readonly<Record<string, unknown>>): Record<string, unknown>;
  /**
   * The model as an edit of `kind` runs it: its id, with the edit endpoint,
   * that endpoint's price and the edit body schema; undefined when the model
   * has no such endpoint.
   */
  edit(model: ModelEntry, kind: EditKind): ModelEntry | undefined;
  /** What `model` can do, for `GET /v1/models`. */
  capabilities(model: ModelEntry): Capability[];
  /** The entry that prices a ledger row: the model `name` as run on `endpoint` (an edit's endpoint included). */
  forEndpoint(name: string, endpoint: string): ModelEntry | undefined;
}

/** fal, as the service calls it: plain data in and out (src/fal/types.ts), never the client's classes; a failed call throws FalCallError (src/fal/errors.ts). */
export interface FalGateway {
  /**
   * `strayIds`: jobs fal reported on earlier, refused attempts of this submit
   * (a 503 can still have created one): they may bill and must be recorded.
   */
  submit(endpoint: string, input: Record<string, unknown>, opts?: CallOptions & { webhookUrl?: string }): Promise<{ falRequestId: string; strayIds: string[] }>;
  /** Resolves once the job reports COMPLETED (which failed jobs also do). */
  waitForCompletion(endpoint: string, falRequestId: string, opts?: CallOptions & { onStatus?: (s: FalJobStatus) => void }): Promise<void>;
  status(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalJobStatus>;
  result(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalResult>;
  cancel(endpoint: string, falRequestId: string, opts?: CallOptions): Promise<FalCancelOutcome>;
  /**
   * Stores a file in fal's storage and answers its public URL, which fal
   * inputs can reference. The client's `storage.upload` sends it whole
   * (initiate, one PUT) or, over 90 MB, in 10 MB parts (initiate-multipart,
   * the parts, complete). `lifetimeS`: how long fal keeps it (its
   * `X-Fal-Object-Lifecycle`); unset, the account's default applies.
   */
  upload(data: Blob | Buffer, contentType: string, fileName: string, opts?: CallOptions & { lifetimeS?: number }): Promise<string>;
  /**
   * Every request fal lists for `endpoint` sent within `window`, with its
   * input: how a submit whose answer was lost is found (request-listing.ts).
   */
  listRequests(endpoint: string, window: ListingWindow, opts?: CallOptions): Promise<FalListedRequest[]>;
  /** Any HTTP answer from the queue host counts as reachable. */
  ping(opts?: CallOptions): Promise<boolean>;
  /**
   * A failed job's error as the caller is told it: fal's statuses and
   * error bodies mapped onto ours, never forwarded (src/fal/upstream-errors.ts).
   */
  callerError(err: FalCallError, ctx: MapContext): ApiError;
  /** Counters for metrics and benchmarks. */
  readonly stats: { statusCalls: number; streamCalls: number; streamsOpen: number; webhookWakeups: number };
}

/**
 * The usage ledger's writes and reads one request makes
 * (src/metering/request-ledger.ts over src/metering/ledger.ts): the
 * reservation, each job's row, and the request's row when another process
 * may have closed it. Storage failures are thrown as StorageError (src/errors.ts).
 */
export interface RequestLedger {
  /**
   * Holds the request's maximum charge against its key's budget and writes
   * its row and one row per job input, in job order (each with what
   * identifies its input, so a submit whose answer was lost can be found);
   * answers the jobs' ids, or why nothing was held.
   */
  reserve(input: RequestReservation): Promise<Reservation>;
  /** Adds fal's id to a job row as soon as submit answers. Repeating it is a no-op. */
  recordSubmit(input: { jobId: string; falRequestId: string }): Promise<JobRecord>;
  /** An open job reaches a final state without images; a job already final is left as it is. */
  closeJob(input: CloseJobInput): Promise<{ changed: boolean; job: JobRecord }>;
  /** Jobs fal made on refused attempts of a request's submit: open `stray` rows, whose cost reconciliation records and nobody is charged. */
  recordStrays(input: { requestId: string; endpoint: string; falRequestIds: readonly string[] }): Promise<void>;
  /** By our id. */
  getRequest(requestId: string): Promise<RequestWithJobs | null>;
}

/** A request's reservation: its row as ledger.ts takes it, and the fal input of each of its jobs. */
export type RequestReservation = Omit<ReserveInput, 'jobs' | 'inputHashes'> & { jobInputs: ReadonlyArray<Record<string, unknown>> };

/** The reservation held, with our id of each job (its ledger row), in job order; or why not. */
export type Reservation = { ok: true; jobIds: readonly string[] } | Exclude<ReserveResult, { ok: true }>;

/**
 * A request's row at its end: settled on its completed jobs in one ledger
 * transaction, or closed uncharged, and what to do when that close does not
 * go through (src/images/closing.ts).
 */
export interface Settlement {
  /** Records every completed job and charges the request for their images. Storage failures are thrown as StorageError. */
  settle(model: UnchargedClose['model'], requestId: string, pricing: RequestPricing, jobs: readonly CompletedJob[]): Promise<SettlementOutcome>;
  /**
   * Closes the request uncharged now: `closed` when this call did, else who
   * did. When the ledger cannot be written the close is kept and retried
   * (`closeLater`) and the call throws MeteringUnavailable, storage's
   * failure sorted (`unavailable`).
   */
  closeUncharged(c: UnchargedClose, log: Logger): Promise<'closed' | 'settled_elsewhere' | 'closed_elsewhere'>;
  /** Keeps a close the ledger could not take on disk and retries it in the background. */
  closeLater(c: UnchargedClose, log: Logger): Promise<void>;
  /**
   * A closing write changed nothing: who closed the request instead. Throws
   * AnswerWithheld when another process took it over (no answer may be written).
   */
  closedBy(request: RequestRecord, log: Logger): 'settled' | 'closed';
}

export interface Media {
  /**
   * The URL we hand the caller (API key `tenant`) for image `falUrl` of
   * `result`: ours, signed, for an image we proxy; the data URI fal sent for
   * an image it sent inline although a URL was asked for; else fal's.
   */
  clientUrl(result: FalResult, falUrl: string, publicBaseUrl: string, tenant: string): string;
  /**
   * The `b64_json` answer item for image `falUrl` of `result`: the base64 fal
   * sent inline (views of its result body), a slice of a data URI, or our
   * download of the image. It reads as a plain `{ b64_json }` but holds
   * Buffers (src/images/b64-item.ts), so a 10 MB image is never also a 10 MB
   * string. A download that fails throws MediaError (src/errors.ts).
   */
  b64Item(result: FalResult, falUrl: string, signal?: AbortSignal): Promise<{ b64_json: string }>;
  /**
   * For GET /v1/files/<rest>?<query>: the upstream URL to proxy and what the
   * URL's signature proved, or null if it is not ours to serve (not a media
   * path, or the signature is missing, altered or expired).
   */
  proxyTarget(rest: string, query: Record<string, unknown>): { url: string; signed: SignedFile } | null;
}

export interface LoraResolver {
  /**
   * `falInput` with each local LoRA path replaced by its fal storage URL (a
   * new object; the input is not changed). Refused paths are a 400 naming
   * `loras`; a failed upload is a 5xx (no fal job exists yet).
   */
  resolve(falInput: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
  /** Uploads made and uploads avoided, for tests and operators. */
  readonly stats: { uploads: number; cacheHits: number };
}
