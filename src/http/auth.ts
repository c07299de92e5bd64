import type { RequestHandler } from 'express';
import { isStorageUnavailable } from '../db/errors.js';
import { ApiError, forbidden, storageFailed, unauthorized } from '../errors.js';

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
    } catch (err) {
      // Never let a request through unchecked: storage down is a retryable 503, storage refusing the lookup our 500.
      if (!isStorageUnavailable(err)) throw storageFailed(err);
      throw new ApiError(503, 'API key verification is unavailable; the request was not processed.', { type: 'service_unavailable', code: 'auth_unavailable', retryAfterS: 5, cause: err });
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
