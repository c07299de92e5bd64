/**
 * What the probe checks: one entry per behaviour of real fal that the
 * emulator reproduces by default (src/emulator/behaviours.ts, jobs.ts,
 * errors.ts, queue-routes.ts, platform-routes.ts), with what the emulator
 * does on its defaults and the fal page that says so. The probe prints one
 * line per entry: what the fal it talked to did, and whether that matches.
 */

export interface ProbeBehaviour {
  id: string;
  /** The emulator's default, in a few words. */
  emulator: string;
  /** fal's documentation for it. */
  docs: string;
}

const DOCS = {
  model: 'https://fal.ai/docs/model-api-reference/image-generation-api/z-image-turbo',
  queue: 'https://docs.fal.ai/documentation/model-apis/inference/queue',
  faq: 'https://docs.fal.ai/faq',
  modelErrors: 'https://fal.ai/docs/documentation/model-apis/errors',
  requestErrors: 'https://fal.ai/docs/documentation/model-apis/request-errors',
  cancel: 'https://fal.ai/docs/inference-api/queue/cancel',
  cancellations: 'https://docs.fal.ai/documentation/development/handle-cancellations',
  cdn: 'https://docs.fal.ai/documentation/model-apis/fal-cdn',
  listing: 'https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint',
  headers: 'https://docs.fal.ai/documentation/model-apis/common-parameters',
} as const;

export const PROBE_BEHAVIOURS = [
  {
    id: 'output_dimensions',
    emulator: 'images[] carry width and height (the omit_dimensions fault drops them)',
    docs: DOCS.model,
  },
  {
    id: 'billable_units',
    emulator: 'the result carries x-fal-billable-units from the price table ({units} for one 512x512 image)',
    docs: DOCS.model,
  },
  {
    id: 'result_request_id',
    emulator: "the result's x-fal-request-id is the submit's request_id (the runner_retry fault changes it)",
    docs: DOCS.queue,
  },
  {
    id: 'output_url_downloads',
    emulator: 'the output image URL answers 200 with the image (for the media TTL, default 1 h)',
    docs: DOCS.faq,
  },
  {
    id: 'validation_after_queueing',
    emulator: 'invalid input on the queue: submit answers 200, the job fails 422 when a runner takes it (fal.run answers 422 at once)',
    docs: DOCS.faq,
  },
  {
    id: 'failed_job_status',
    emulator: 'the failed job reports COMPLETED on status (with error, error_type); the failure is on the result',
    docs: DOCS.queue,
  },
  {
    id: 'model_error_hints',
    emulator: 'the 422 is a detail list with X-Fal-Retryable: false and no X-Fal-Error-Type',
    docs: DOCS.modelErrors,
  },
  {
    id: 'billed_failure',
    emulator: "the failed job bills the endpoint's error units: x-fal-billable-units {errorUnits}",
    docs: DOCS.faq,
  },
  {
    id: 'cancel_queued',
    emulator: 'cancel while queued: 202 CANCELLATION_REQUESTED, the job is removed unbilled; its result then answers 400 "Request was cancelled"',
    docs: DOCS.cancel,
  },
  {
    id: 'cancel_running',
    emulator: 'cancel while IN_PROGRESS: 202 CANCELLATION_REQUESTED, a signal only: the job runs on, completes 200 and bills',
    docs: DOCS.cancellations,
  },
  {
    id: 'storage_upload',
    emulator: 'storage.upload returns a CDN URL that serves the same bytes (200)',
    docs: DOCS.cdn,
  },
  {
    id: 'request_listing',
    emulator: 'the Platform API lists every queue request (cancelled and failed too) by request_id, with json_input and json_output',
    docs: DOCS.listing,
  },
  {
    id: 'start_timeout_accepted',
    emulator: 'X-Fal-Request-Timeout (seconds, > 0.1) is accepted at submit; a job that starts in time runs normally',
    docs: DOCS.headers,
  },
  {
    id: 'start_timeout_expiry',
    emulator: 'a job not started by its deadline ends 504 request_timeout, X-Fal-Request-Timeout-Type: user, not retryable, unbilled',
    docs: DOCS.requestErrors,
  },
] as const satisfies readonly ProbeBehaviour[];

export type BehaviourId = (typeof PROBE_BEHAVIOURS)[number]['id'];

/**
 * Behaviours the probe cannot make happen without spending money or arming
 * emulator faults: NOT OBSERVED is their normal verdict, on real fal and on
 * the emulator alike.
 */
export const ONLY_OBSERVED_BY_CHANCE: readonly BehaviourId[] = ['start_timeout_expiry'];
