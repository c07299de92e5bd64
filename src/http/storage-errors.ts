import type { NextFunction, Request, Response } from 'express';
import { ApiError, storageUnavailable } from '../errors.js';

type Handler = (req: Request, res: Response, next: NextFunction) => Promise<void>;

/**
 * For routes whose only dependency that can fail is the database (usage,
 * key management): whatever they throw that is not already an API error came
 * from storage, so it is answered as a retryable 503. Once a streamed answer
 * has begun, the error goes on as it is, for app.ts to cut the connection.
 */
export function storageBacked(handler: Handler): Handler {
  return async (req, res, next) => {
    try {
      await handler(req, res, next);
    } catch (err) {
      if (err instanceof ApiError || res.headersSent) throw err;
      throw storageUnavailable(err);
    }
  };
}
