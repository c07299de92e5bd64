import type { NextFunction, Request, Response } from 'express';
import { isStorageUnavailable } from '../db/errors.js';
import { ApiError, storageFailed, storageUnavailable } from '../errors.js';

type Handler = (req: Request, res: Response, next: NextFunction) => Promise<void>;

/**
 * For routes whose only dependency that can fail is the database (usage,
 * key management): whatever they throw that is not already an API error came
 * from storage. Storage that cannot be reached is a retryable 503; storage
 * that answered and refused is our 500, with no retry invited (a retry would
 * be refused the same way). Once a streamed answer has begun, the error goes
 * on as it is, for app.ts to cut the connection.
 */
export function storageBacked(handler: Handler): Handler {
  return async (req, res, next) => {
    try {
      await handler(req, res, next);
    } catch (err) {
      if (err instanceof ApiError || res.headersSent) throw err;
      throw storageError(err);
    }
  };
}

function storageError(err: unknown): ApiError {
  return isStorageUnavailable(err) ? storageUnavailable(err) : storageFailed(err);
}
