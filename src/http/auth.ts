import type { RequestHandler } from 'express';
import { forbidden, serviceUnavailable, unauthorized } from '../errors.js';

import type { Principal } from '../metering/auth.js';

export type { Principal };

export type Authenticate = (token: string) => Promise<Principal | null>;

/** `Authorization: Bearer <key>`; the key itself never reaches a log or a response. */
export function requireKey(authenticate: Authenticate): RequestHandler {
  return async (req, res, next) => {
    const header = req.get('authorization') ?? '';
    const m = /^Bearer\s+(\S{1,512})\s*$/i.exec(header);
    if (!m) throw unauthorized(header ? 'The Authorization header must be "Bearer <key>".' : undefined);
    let principal: Principal | null;
    try {
      principal = await authenticate(m[1]!);
    } catch {
      // Key storage is down: refuse (never let a request through unchecked).
      throw serviceUnavailable('API key verification is unavailable; the request was not processed.', 5, 'auth_unavailable');
    }
    if (!principal) throw unauthorized('Invalid API key.');
    res.locals.principal = principal;
    next();
  };
}

export function requireAdmin(): RequestHandler {
  return (_req, res, next) => {
    const p = res.locals.principal as Principal | undefined;
    if (!p || p.role !== 'admin') throw forbidden('This route needs an admin key.');
    next();
  };
}
