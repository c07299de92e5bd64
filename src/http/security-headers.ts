import helmet from 'helmet';
import type { RequestHandler } from 'express';
import type { ServerResponse } from 'node:http';

/**
 * helmet's strict defaults, relaxed once: images are fetched cross-origin by
 * design (the files route), so Cross-Origin-Resource-Policy is cross-origin.
 */
export const securityHeaders: RequestHandler = helmet({ crossOriginResourcePolicy: { policy: 'cross-origin' } });

/**
 * The same headers as plain values, for the answers written before Express
 * sees a request (src/http/http-server.ts). Taken from the middleware itself
 * so the two can never differ.
 */
export function securityHeaderValues(): Record<string, string> {
  const out: Record<string, string> = {};
  const recorder = {
    setHeader: (name: string, value: unknown) => {
      out[name.toLowerCase()] = String(value);
    },
    removeHeader: () => {},
  };
  securityHeaders({} as never, recorder as never, () => {});
  return out;
}

/**
 * helmet's headers, added to every response of the app as its head is
 * written (each one the response does not already carry), instead of by a
 * middleware when the request arrives. Same headers on the wire; but a
 * response's headers are kept in a dictionary until it is sent, and an image
 * request may wait minutes for fal, thousands at once: a dozen fixed headers
 * set on arrival were ~1.4 KB per waiting request (heap diff, bench/probes/heap-diff.ts).
 * A route that sets its own value (the HTML pages' CSP) keeps it.
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
