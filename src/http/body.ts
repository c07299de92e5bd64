import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import { ApiError, invalidRequest } from '../errors.js';

/**
 * JSON bodies only. The content type is checked before parsing so a form or
 * text body gets a 415 instead of an empty `req.body` (Express 5 leaves it
 * undefined), and the parser's own errors are turned into ours.
 */
export function jsonBody(limitBytes: number): RequestHandler[] {
  const parse = express.json({ limit: limitBytes, strict: false, type: () => true });
  const requireJson: RequestHandler = (req, _res, next) => {
    const type = (req.get('content-type') ?? '').split(';', 1)[0]!.trim().toLowerCase();
    if (type !== 'application/json' && !/^application\/[a-z0-9.+-]+\+json$/.test(type)) {
      throw new ApiError(415, `Content-Type must be application/json (got ${type ? JSON.stringify(type.slice(0, 100)) : 'none'}).`, {
        type: 'invalid_request_error',
        code: 'unsupported_media_type',
      });
    }
    next();
  };
  return [requireJson, parse];
}

interface ParserError {
  type?: string;
  status?: number;
  limit?: number;
  code?: string;
}

/** zlib's codes: Z_DATA_ERROR, Z_BUF_ERROR... for gzip/deflate, ERR__ERROR_FORMAT_... for brotli. */
const ZLIB_CODE = /^(?:Z_|ERR__ERROR_|ERR_BROTLI)/;

/** Maps body-parser failures; anything else passes on. */
export const bodyErrors: ErrorRequestHandler = (err: ParserError, _req, _res, next) => {
  switch (err?.type) {
    case 'entity.parse.failed':
      return next(invalidRequest('The request body is not valid JSON.', null, 'invalid_json'));
    case 'entity.too.large':
      return next(new ApiError(413, `The request body is larger than ${err.limit} bytes.`, { type: 'invalid_request_error', code: 'request_too_large' }));
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return next(new ApiError(415, 'The request body must be UTF-8 JSON.', { type: 'invalid_request_error', code: 'unsupported_media_type' }));
    case 'request.aborted':
      return next(new ApiError(400, 'The request body was not fully received.', { type: 'invalid_request_error', code: 'request_aborted' }));
    default:
      // A body that does not inflate per its Content-Encoding arrives as zlib's own error, with no body-parser type.
      if (!(err instanceof ApiError) && typeof err?.code === 'string' && ZLIB_CODE.test(err.code)) {
        return next(invalidRequest('The request body could not be decompressed as its Content-Encoding says.', null, 'invalid_body_encoding'));
      }
      // The router refuses a path parameter that is not valid percent-encoding (/v1/files/%ZZ) with a bare URIError.
      if (err instanceof URIError) return next(invalidRequest('The URL path is not valid percent-encoding.', null, 'invalid_path'));
      return next(err);
  }
};
