import type { Principal } from './auth.js';

/**
 * What the app keeps about a request on `res.locals`, declared up front.
 * Express starts `res.locals` as `Object.create(null)`, which V8 keeps as a
 * dictionary: ~450 B for these few fields, held for as long as an image
 * request waits on fal (thousands at once). An object of a class with every
 * field set in the constructor holds them in place, ~80 B. Every field the
 * app uses is here; `res.locals` stays open to others, as Express's is.
 */
export class RequestLocals {
  principal: Principal | undefined = undefined;
  model: string | undefined = undefined;
  prompt: unknown = undefined;
  falRequestId: string | undefined = undefined;
  errorCode: string | undefined = undefined;
  /** performance.now() when the request arrived, for the access log's duration. */
  startedAt = 0;
  /** The images route's link to the caller (routes/images.ts). */
  caller: unknown = undefined;
  constructor(readonly requestId: string) {}
}
