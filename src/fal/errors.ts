/**
 * What a failed fal call looks like to the rest of the service: plain data,
 * never the client's classes, so nothing above src/fal changes if fal's
 * client does.
 */

export type FalPhase = 'submit' | 'status' | 'stream' | 'result' | 'cancel' | 'storage' | 'other';

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
  /** fal's `x-fal-billable-units` on the failed answer (a failed job's bill), verbatim. */
  readonly billableUnits: string | undefined;

  constructor(message: string, init: { phase: FalPhase; kind: FalErrorKind; status?: number; body?: unknown; falRequestId?: string; retryAfterS?: number; ambiguous?: boolean; strayIds?: string[]; billableUnits?: string | undefined; cause?: unknown }) {
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
    this.billableUnits = init.billableUnits;
  }
}

