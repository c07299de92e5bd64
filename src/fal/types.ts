/**
 * What the fal gateway (src/fal/gateway.ts) answers and takes: plain data,
 * never the client's classes, so nothing above src/fal changes if fal's
 * client does.
 */
import type { InlineImage } from './inline-images.js';
import type { FalListedRequest, ListingWindow } from './request-listing.js';

export interface FalImage {
  url: string;
  width: number;
  height: number;
  content_type: string;
  file_name?: string;
  file_size?: number;
}

export interface FalImageOutput {
  images: FalImage[];
  seed?: number;
  has_nsfw_concepts?: boolean[];
  prompt?: string;
  timings?: Record<string, unknown>;
  [k: string]: unknown;
}

export interface FalResult {
  /** The id submit answered: the job's key, whatever the result's header says. */
  falRequestId: string;
  /** The id fal's answer named when it differs (its runner retried the job under another id). */
  otherFalId?: string;
  output: FalImageOutput;
  /** fal's `x-fal-billable-units`, verbatim (a decimal string), when sent. */
  billableUnits: string | null;
  /**
   * Images fal sent inline (sync_mode data URIs), keyed by the placeholder
   * that stands in `output.images[].url`: their base64 as views of the
   * response body, never made into a string (see inline-images.ts).
   */
  inlineImages?: ReadonlyMap<string, InlineImage>;
}

export type FalJobStatus = {
  status: 'IN_QUEUE' | 'IN_PROGRESS' | 'COMPLETED';
  queuePosition?: number;
  /** On COMPLETED: fal's word that the job ended with an error (`error`, `error_type` in its status). */
  failed?: { errorType?: string };
};

export type FalCancelOutcome = 'cancellation_requested' | 'already_completed' | 'not_found' | 'failed';

export interface CallOptions {
  signal?: AbortSignal;
}

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
  /** Counters for metrics and benchmarks. */
  readonly stats: { statusCalls: number; streamCalls: number; streamsOpen: number; webhookWakeups: number };
}
