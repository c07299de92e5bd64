import { createServer, type IncomingMessage, type RequestListener, type ServerResponse, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ApiError } from '../errors.js';
import { createErrorWriter, writeErrorToSocket } from './error-writer.js';
import pino from 'pino';
import { appClasses } from './waiting-requests.js';
import { newRequestId } from './request-id.js';
import { securityHeaderValues } from './security-headers.js';

/**
 * The HTTP server, with what Node's HTTP layer answers before Express sees a
 * request brought into line with every other answer of this service.
 *
 * - A request the parser refuses (an unknown method, control characters in a
 *   header, conflicting lengths, a byte above 0x7f in the path...) gets
 *   Node's bare "400 Bad Request" with no body and no x-request-id. Here it
 *   gets the error JSON, with the same statuses Node would use.
 * - An HTTP/1.1 request without Host gets the same bare 400 from Node; here
 *   the 400 (which RFC 9112 requires) is ours.
 * - `Expect` with anything but 100-continue gets Node's bodiless 417, and the
 *   body the client sent anyway stays on the connection to be parsed as the
 *   next request, which then fails and takes the connection down under the
 *   client's following request. The expectation is ignored instead (RFC 9110
 *   lets a server do so) and the request is served like any other.
 */
export interface ConnectionLimits {
  /** Longest a client may take to send a request's headers; a fresh connection's clock starts when it opens. */
  headersTimeoutMs: number;
  /** Longest a client may take to send a whole request, body included. Answers are not limited by it. */
  bodyTimeoutMs: number;
  /** How long an idle kept-alive connection is kept (config `KEEP_ALIVE_TIMEOUT_MS` gives the reason). */
  keepAliveTimeoutMs: number;
  /** Connections held at once; past it a new connection is closed unanswered (Node's `maxConnections`). */
  maxConnections: number;
}

export interface HttpServerOptions {
  /** Without them, Node's defaults (minutes) apply. */
  limits?: ConnectionLimits;
  /** Counts what the server turns away before Express sees it. */
  onRefused?: (reason: 'request_timeout' | 'max_connections') => void;
}

/** Node's server, counting the requests it has not finished answering (for the shutdown drain). */
export interface HttpServer extends Server {
  readonly requestsInProgress: number;
}

/** Emitted by an HttpServer each time its last request in progress is answered. */
export const ALL_ANSWERED = 'allAnswered';

export function createHttpServer(app: RequestListener, logger?: Logger, opts: HttpServerOptions = {}): HttpServer {
  const writeError = createErrorWriter(logger ?? pino({ level: 'silent' }));
  const server = createServer({ requireHostHeader: false, ...timeoutOptions(opts.limits), ...appClasses(app) }, (req, res) => {
    if (req.httpVersion === '1.1' && req.headers.host === undefined) {
      const id = newRequestId();
      logger?.info({ request_id: id, status: 400, error_code: 'missing_host' }, 'request without Host refused');
      // Through the response, not the socket: Node holds it until earlier responses on the connection are written.
      for (const [name, value] of Object.entries({ ...RAW_HEADERS, 'x-request-id': id, connection: 'close' })) res.setHeader(name, value);
      writeError(new ApiError(400, 'An HTTP/1.1 request must carry a Host header.', { type: 'invalid_request_error', code: 'missing_host' }), res);
      return;
    }
    app(req, res);
  });

  // Raw bytes of ours must never land inside a response that has started:
  // like Node's own handler, answer only while no response on the connection
  // has sent its headers (a request whose body fails to parse already has one in flight).
  // The responses open on a connection hang off the socket itself: nearly
  // always one, kept bare; a Set only when requests are pipelined. One shared
  // 'close' listener, so a request waiting for minutes holds no closure here.
  let inProgress = 0;
  function answered(this: ServerResponse): void {
    forgetResponse.call(this);
    inProgress -= 1;
    if (inProgress === 0) server.emit(ALL_ANSWERED);
  }
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket as Duplex & { [OPEN_RESPONSES]?: ServerResponse | Set<ServerResponse> };
    const open = socket[OPEN_RESPONSES];
    if (open === undefined) socket[OPEN_RESPONSES] = res;
    else if (open instanceof Set) open.add(res);
    else socket[OPEN_RESPONSES] = new Set([open, res]);
    inProgress += 1;
    res.on('close', answered);
  });
  Object.defineProperty(server, 'requestsInProgress', { get: () => inProgress });

  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    server.emit('request', req, res);
  });

  if (opts.limits) {
    server.keepAliveTimeout = opts.limits.keepAliveTimeoutMs;
    capConnections(server, opts.limits.maxConnections, opts.onRefused, logger);
  }

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') opts.onRefused?.('request_timeout');
    const open = (socket as { [OPEN_RESPONSES]?: ServerResponse | Set<ServerResponse> })[OPEN_RESPONSES];
    const started = open instanceof Set ? [...open].some((res) => res.headersSent) : open?.headersSent === true;
    if (err.code === 'ECONNRESET' || !socket.writable || started) {
      socket.destroy();
      return;
    }
    const [status, code, message] =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'headers_too_large', 'The request headers are too large.']
        : err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW'
          ? [413, 'request_too_large', 'The chunk extensions of the request body are too large.']
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'request_timeout', 'The request was not received in time.']
            : [400, 'invalid_http', 'The request is not valid HTTP/1.1.'];
    const id = newRequestId();
    logger?.info({ request_id: id, status, error_code: code, parser_error: err.code }, 'request refused by the HTTP parser');
    // The method is only known when the packet the parser choked on starts the request, which for
    // anything short of a header overflow spanning reads it does.
    const head = (err as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
    writeErrorToSocket(socket, new ApiError(status, message, { type: 'invalid_request_error', code }), { ...RAW_HEADERS, 'x-request-id': id }, head);
  });
  return server as HttpServer;
}

function timeoutOptions(limits: ConnectionLimits | undefined): { headersTimeout?: number; requestTimeout?: number; connectionsCheckingInterval?: number } {
  if (!limits) return {};
  return {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.bodyTimeoutMs,
    // Node looks for expired requests on this interval (30 s by default), so a
    // timeout of seconds would otherwise be enforced half a minute late.
    connectionsCheckingInterval: Math.min(1_000, Math.max(50, Math.floor(limits.headersTimeoutMs / 4))),
  };
}

/** Node closes a connection past the cap before any byte is read: counted, and warned of at most once a minute. */
function capConnections(server: Server, max: number, onRefused: HttpServerOptions['onRefused'], logger: Logger | undefined): void {
  server.maxConnections = max;
  let lastWarning = -Infinity;
  let dropped = 0;
  server.on('drop', () => {
    onRefused?.('max_connections');
    dropped += 1;
    if (Date.now() - lastWarning < DROP_WARNING_INTERVAL_MS) return;
    lastWarning = Date.now();
    logger?.warn({ max_connections: max, dropped }, 'connection cap reached: new connections are closed unanswered');
    dropped = 0;
  });
}

const OPEN_RESPONSES = Symbol('openResponses');

/** At most one warning a minute while connections are being dropped at the cap. */
const DROP_WARNING_INTERVAL_MS = 60_000;

function forgetResponse(this: ServerResponse): void {
  const socket = this.req.socket as Duplex & { [OPEN_RESPONSES]?: ServerResponse | Set<ServerResponse> };
  const open = socket[OPEN_RESPONSES];
  if (open === this) socket[OPEN_RESPONSES] = undefined;
  else if (open instanceof Set) open.delete(this);
}


/** These answers never pass through Express, so they carry its security headers themselves. */
const RAW_HEADERS: Readonly<Record<string, string>> = {
  ...securityHeaderValues(),
  'cache-control': 'no-store',
};
