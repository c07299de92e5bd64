import { randomUUID } from 'node:crypto';
import type { RequestHandler } from 'express';

/** Incoming ids are echoed only when they are short and plain, so logs and headers stay clean. */
const SANE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

export function newRequestId(): string {
  return `req_${randomUUID().replace(/-/g, '')}`;
}

export function requestId(): RequestHandler {
  return (req, res, next) => {
    const incoming = req.get('x-request-id');
    const id = incoming && SANE_ID.test(incoming) ? incoming : newRequestId();
    res.locals.requestId = id;
    res.setHeader('x-request-id', id);
    next();
  };
}
