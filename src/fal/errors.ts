/**
 * What a failed fal call looks like to the rest of the service: plain data,
 * never the client's classes, so nothing above src/fal changes if fal's
 * client does.
 */

export type FalPhase = 'submit' | 'status' | 'stream' | 'result' | 'cancel' | 'storage' | 'listing' | 'other';

export type FalErrorKind = 'http' | 'network' | 'aborted' | 'bad_response';

export class FalCallError extends Error {
  readonly phase: FalPhase;
  readonly kind: FalErrorKind;
  /** The status fal answered on the last attempt. */
  readonly status: number | undefined;
  readonly body: unknown;
  readonly falRequestId: string | undefined;
  readonly retryAfterS: number | undefined;
  /** A submit that may have created a job we never heard about. */
  readonly ambiguous: boolean;
  /** Jobs fal reported on failed submit attempts: they may exist and bill. */
  readonly strayIds: string[];
  /**
   * fal's name for the error: `X-Fal-Error-Type`, else the body's
   * `error_type`, else the first `detail` entry's `type` (model errors such
   * as `content_policy_violation` carry it only there).
   */
  readonly errorType: string | undefined;
  /** fal's `X-Fal-Retryable`: whether sending the same request again may succeed. */
  readonly retryable: boolean | undefined;
  /**
   * fal's `x-fal-billable-units` on this answer, verbatim: a failed job can
   * bill (a content-policy refusal, a 422 after queueing), and this is what.
   */
  readonly billableUnits: string | undefined;
  /**
   * The output of a result fal answered 200 (so the job completed and
   * billed) that we could not use, kept so the cost is never lost.
   */
  readonly output: unknown;

  constructor(message: string, init: FalCallErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'FalCallError';
    this.phase = init.phase;
    this.kind = init.kind;
    this.status = init.status;
    this.body = init.body;
    this.falRequestId = init.falRequestId;
    this.retryAfterS = init.retryAfterS;
    this.ambiguous = init.ambiguous ?? false;
    this.strayIds = init.strayIds ?? [];
    this.errorType = init.errorType ?? errorTypeOf(init.body);
    this.retryable = init.retryable;
    this.billableUnits = init.billableUnits;
    this.output = init.output;
  }
}

export interface FalCallErrorInit {
  phase: FalPhase;
  kind: FalErrorKind;
  status?: number | undefined;
  body?: unknown;
  falRequestId?: string | undefined;
  retryAfterS?: number | undefined;
  ambiguous?: boolean;
  strayIds?: string[];
  errorType?: string | undefined;
  retryable?: boolean | undefined;
  billableUnits?: string | undefined;
  output?: unknown;
  cause?: unknown;
}

/** The error type an error body names: `error_type` (request errors) or the first `detail[].type` (model errors). */
export function errorTypeOf(body: unknown): string | undefined {
  const b = body as { error_type?: unknown; detail?: unknown } | null | undefined;
  if (typeof b?.error_type === 'string') return b.error_type;
  const first = Array.isArray(b?.detail) ? (b.detail[0] as { type?: unknown } | undefined) : undefined;
  return typeof first?.type === 'string' ? first.type : undefined;
}

