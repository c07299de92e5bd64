import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { AnswerWithheld, ApiError, errorResponse } from '../errors.js';

/**
 * The one place an error becomes an answer, whatever state the response is
 * in: the error JSON (errors.ts shapes it) while nothing was sent; an SSE
 * `error` event on a stream that started (the openai SDK throws on any event
 * whose data has an `error` key, with its message); a cut connection when a
 * body was under way, or when no answer may be written (`AnswerWithheld`);
 * and raw bytes on a socket the HTTP parser refused, which never became a
 * request. Unexpected errors and 5xx answers are logged
 * here, once.
 */
export interface ErrorWriter {
  (err: unknown, res: ServerResponse): void;
}

export function createErrorWriter(logger: Logger): ErrorWriter {
  return (err, res) => {
    if (err instanceof AnswerWithheld) {
      // Its new owner bills it as a request nobody answered; an answer here would contradict that bill.
      logger.error({ request_id: err.requestId, owner_lease_id: err.owner }, 'request taken over by another process; connection closed without an answer');
      res.destroy();
      return;
    }
    const out = errorResponse(err);
    const locals = (res as { locals?: Record<string, unknown> }).locals;
    if (locals) locals.errorCode = out.body.error.code;
    const streamed = res.headersSent && isEventStream(res);
    if (!(err instanceof ApiError) || out.status >= 500) logger.error({ err, request_id: locals?.requestId, client_request_id: locals?.clientRequestId }, streamed ? 'streamed request failed' : 'request failed');
    if (res.headersSent) {
      if (streamed && !res.writableEnded && !res.destroyed) {
        res.end(`event: error\ndata: ${JSON.stringify(out.body)}\n\n`);
      } else {
        res.destroy();
      }
      return;
    }
    const body = JSON.stringify(out.body);
    res.statusCode = out.status;
    for (const [name, value] of Object.entries(out.headers)) res.setHeader(name, value);
    res.setHeader('content-type', 'application/json; charset=utf-8');
    res.setHeader('content-length', Buffer.byteLength(body));
    res.end(body);
  };
}

function isEventStream(res: ServerResponse): boolean {
  return String(res.getHeader('content-type') ?? '').startsWith('text/event-stream');
}

/**
 * An error answer written straight to a socket, for what Node's HTTP parser
 * refused before any request object existed. Written then destroyed, as Node
 * does: the request may be half-read, so the connection cannot carry another.
 * An answer to HEAD has no body.
 */
export function writeErrorToSocket(socket: Duplex, err: ApiError, extraHeaders: Record<string, string | number>, head: boolean): void {
  const out = errorResponse(err);
  const body = JSON.stringify(out.body);
  const headers = { ...extraHeaders, ...out.headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' };
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.write(`HTTP/1.1 ${out.status} ${REASONS[out.status] ?? 'Error'}\r\n${lines}\r\n${head ? '' : body}`);
  socket.destroy();
}

const REASONS: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 413: 'Payload Too Large', 431: 'Request Header Fields Too Large' };
