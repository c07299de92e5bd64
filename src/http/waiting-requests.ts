import { IncomingMessage, ServerResponse, type RequestListener } from 'node:http';
import type { Request, Response } from 'express';
import type { Principal } from './auth.js';
import type { ErrorWriter } from './error-writer.js';
import { securityHeaderValues } from './security-headers.js';

/**
 * Every rule this service follows to keep a waiting request small, in one
 * place. An image request may wait minutes for fal, thousands at once, so
 * what each one holds while it waits is the service's memory (target: under
 * 20 KB per waiting job; bench/waiting.ts measures it at 10,000 jobs
 * and test/http/waiting-requests.test.ts guards it at 1,000). Express and
 * Node used as designed held more than that target allows; each rule below
 * says what it saves, measured with heap snapshots of 1,000 waiting jobs
 * (bench/probes/heap-diff.ts), and has a test in
 * test/http/waiting-requests.test.ts that fails when it stops applying.
 *
 * Outside this module the request path is written as the frameworks intend.
 */

/**
 * Rule 1, ~1.7 KB per request. Express gives every request and response its
 * app's prototypes with Object.setPrototypeOf, and V8 then gives each of them
 * a map (hidden class) of its own; property lookups on them can never be
 * cached either, which costs CPU on every request. Node can build the objects from classes
 * whose prototypes already are the app's, which turns Express's swap into a
 * no-op. The prototypes keep every property Express put on them and the same
 * chain (Express's request and response, then Node's), so instanceof and
 * every getter behave as Express defines them. Pass the result to `http.createServer`.
 */
export function appClasses(app: RequestListener): { IncomingMessage?: typeof IncomingMessage; ServerResponse?: typeof ServerResponse } {
  const a = app as RequestListener & { request?: object; response?: object; [CLASSES]?: ReturnType<typeof appClasses> };
  if (a[CLASSES]) return a[CLASSES];
  if (typeof a.request !== 'object' || typeof a.response !== 'object' || !(a.request instanceof IncomingMessage) || !(a.response instanceof ServerResponse)) return {};
  class AppRequest extends IncomingMessage {}
  Object.setPrototypeOf(AppRequest.prototype, Object.getPrototypeOf(a.request));
  Object.defineProperties(AppRequest.prototype, Object.getOwnPropertyDescriptors(a.request));
  class AppResponse<Req extends IncomingMessage = IncomingMessage> extends ServerResponse<Req> {}
  Object.setPrototypeOf(AppResponse.prototype, Object.getPrototypeOf(a.response));
  Object.defineProperties(AppResponse.prototype, Object.getOwnPropertyDescriptors(a.response));
  a.request = AppRequest.prototype;
  a.response = AppResponse.prototype;
  a[CLASSES] = { IncomingMessage: AppRequest, ServerResponse: AppResponse as typeof ServerResponse };
  return a[CLASSES];
}

const CLASSES = Symbol('appClasses');

/**
 * Rule 2, ~1.4 KB per request. helmet's headers are added to every response
 * of the app as its head is written (each one the response does not already
 * carry) rather than by a middleware when the request arrives: a response's
 * headers are kept in a dictionary until it is sent, and a dozen fixed
 * headers set on arrival stayed with every waiting request. Same headers on
 * the wire; a route that sets its own value (the HTML pages' CSP) keeps it.
 */
export function addSecurityHeadersOnWrite(responsePrototype: ServerResponse): void {
  const defaults = Object.entries(securityHeaderValues());
  const writeHead = responsePrototype.writeHead;
  Object.defineProperty(responsePrototype, 'writeHead', {
    configurable: true,
    writable: true,
    value: function writeHeadWithSecurityHeaders(this: ServerResponse, ...args: unknown[]) {
      if (!this.headersSent) for (const [name, value] of defaults) if (!this.hasHeader(name)) this.setHeader(name, value);
      return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
    },
  });
}

/**
 * Rule 3, ~370 B per request. What the app keeps on `res.locals`, declared
 * up front: Express starts `res.locals` as `Object.create(null)`, which V8
 * keeps as a dictionary; an object of a class with every field set in the
 * constructor holds them in place. Every field the app uses is here;
 * `res.locals` stays open to others, as Express's is.
 */
export class RequestLocals {
  principal: Principal | undefined = undefined;
  model: string | undefined = undefined;
  prompt: unknown = undefined;
  falRequestId: string | undefined = undefined;
  errorCode: string | undefined = undefined;
  /** performance.now() when the request arrived, for the access log's duration. */
  startedAt = 0;
  /** Aborted when the caller leaves before its answer (`abortWhenCallerLeaves`). */
  caller: AbortController | undefined = undefined;
  /** The image routes' `Idempotency-Key`, once checked (src/http/idempotency.ts). */
  idempotencyKey: string | undefined = undefined;
  /** `requestId` is ours; `clientRequestId` the caller's `x-request-id`, if it sent a usable one. */
  constructor(
    readonly requestId: string,
    readonly clientRequestId: string | undefined = undefined,
  ) {}
}

/**
 * Rule 4, ~0.9 KB per request. While an async handler's promise is pending,
 * Express keeps the request's dispatch state: its `next` chain (a closure and
 * context per router level), the route's params and the parsed URL. A
 * handler that waits on fal is run here instead: Express sees it return at
 * once, its state is dropped, and a failure goes to the app's one error
 * writer directly (it would reach the same writer through `next`).
 */
export function answerLater(handler: (req: Request, res: Response) => Promise<void>, writeError: ErrorWriter): (req: Request, res: Response) => void {
  return (req, res) => {
    handler(req, res).catch((err: unknown) => {
      try {
        writeError(err, res);
      } catch {
        // Nothing may escape as an unhandled rejection (it would end the process): the answer is lost, the socket goes.
        res.destroy();
      }
    });
    req.next = undefined;
    req.params = NO_PARAMS;
    (req as { _parsedUrl?: unknown })._parsedUrl = undefined;
  };
}

const NO_PARAMS: Record<string, string> = Object.freeze({}) as Record<string, string>;

/**
 * Rule 5, ~1 KB per request: one AbortController per request, which the
 * response aborts when it closes before it finished and which the use case
 * also aborts for its own reasons (src/images/request-stop.ts), rather than
 * one for the caller and one for the fal work: Node builds each AbortSignal
 * with a prototype swap, so each has a hidden class of its own, and its event
 * maps besides. The response tells it through one listener function shared
 * by every request, not a closure per request.
 */
export function requestController(res: Response): AbortController {
  const controller = new AbortController();
  (res.locals as RequestLocals).caller = controller;
  res.on('close', onResponseClose);
  return controller;
}

/** Mounted before the image routes' handlers: each request's controller is on its locals (`caller`) before the handler runs. */
export function abortWhenCallerLeaves(_req: Request, res: Response, next: () => void): void {
  requestController(res);
  next();
}

function onResponseClose(this: Response): void {
  if (!this.writableFinished) (this.locals as RequestLocals).caller?.abort(new Error('caller went away'));
}
