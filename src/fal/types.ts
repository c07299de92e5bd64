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

/** The port the rest of the service calls fal through is declared with the request's other ports. */
export type { FalGateway } from '../images/ports.js';
