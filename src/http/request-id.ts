import { randomBytes } from 'node:crypto';
import type { RequestHandler } from 'express';
import { RequestLocals } from './waiting-requests.js';

/**
 * Incoming ids are echoed only when they are short and plain, so logs and
 * headers stay clean, and never when they look like one of our API keys
 * (`sk-...`): a client that pastes its key into the wrong header must not
 * see it logged on every line of the request.
 */
const SANE_ID = /^(?!sk-)[A-Za-z0-9._:-]{8,128}$/i;

/**
 * `req_` + 32 lowercase hex digits (the shape migration 0005 recognises as
 * ours): the first 12 are the milliseconds since the epoch, the other 20
 * random (80 bits). Ids made close in time sort together, so the ledger's
 * primary-key indexes (requests, and jobs named after their request) take
 * each new entry at their right-hand edge and a request's later writes find
 * their pages still cached, instead of touching a random page of an index
 * that outgrows memory (docs/LEDGER-COST.md). An id tells its creation
 * time, which its row and logs say anyway.
 */
export function newRequestId(now = Date.now()): string {
  return `req_${now.toString(16).padStart(12, '0')}${randomBytes(10).toString('hex')}`;
}

/**
 * Every request gets our id, unique across keys, which keys its ledger row
 * and billing event. A caller's `x-request-id` is only its label for the
 * request, unique within its key (the ledger refuses a key's second use),
 * and is what the `x-request-id` answer header echoes, so clients keep
 * correlating on what they sent; without one the header carries our id.
 * Our id is in the body's `meta.request_id` either way.
 */
export function requestId(): RequestHandler {
  return (req, res, next) => {
    const incoming = req.get('x-request-id');
    const label = incoming && SANE_ID.test(incoming) ? incoming : undefined;
    const id = newRequestId();
    // Replaces Express's dictionary-mode locals (nothing is on it yet): see waiting-requests.ts.
    res.locals = new RequestLocals(id, label) as unknown as typeof res.locals;
    res.setHeader('x-request-id', label ?? id);
    next();
  };
}
