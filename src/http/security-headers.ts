import helmet from 'helmet';
import type { RequestHandler } from 'express';

/**
 * helmet's strict defaults, relaxed once: images are fetched cross-origin by
 * design (the files route), so Cross-Origin-Resource-Policy is cross-origin.
 */
export const securityHeaders: RequestHandler = helmet({ crossOriginResourcePolicy: { policy: 'cross-origin' } });

/**
 * The same headers as plain values, for the answers written before Express
 * sees a request (src/http/http-server.ts) and for the headers every app
 * answer gets as it is written (src/http/waiting-requests.ts). Taken from the middleware itself
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
