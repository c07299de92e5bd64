/**
 * multipart/form-data bodies (what the openai SDK sends to
 * `/images/edits`), parsed as a stream by busboy: each file goes straight to
 * a temporary file under a byte cap, hashed on the way (an Idempotency-Key
 * replay must match the same bytes), and is never held whole in memory.
 * Problems are collected while the body is drained and thrown once it has
 * been read, so the answer is never written over a half-read upload.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Request } from 'express';
import busboy from 'busboy';
import { ApiError, invalidRequest } from '../errors.js';

export interface UploadedFile {
  path: string;
  bytes: number;
  sha256: string;
}

export interface MultipartBody {
  fields: Record<string, string>;
  /** Files by field name, `[]` removed (the SDK sends arrays as `image[]`). */
  files: Record<string, UploadedFile[]>;
}

export interface MultipartOptions {
  /** Directory the files are written to; the caller removes it. */
  dir: string;
  maxFileBytes: number;
  /** Field names that may carry files. */
  fileFields: readonly string[];
}

const MAX_FIELD_BYTES = 64 * 1024;

export async function readMultipart(req: Request, opts: MultipartOptions): Promise<MultipartBody> {
  const fields: Record<string, string> = Object.create(null) as Record<string, string>;
  const files: Record<string, UploadedFile[]> = Object.create(null) as Record<string, UploadedFile[]>;
  const writes: Array<Promise<void>> = [];
  let problem: ApiError | undefined;
  const refuse = (e: ApiError) => (problem ??= e);
  let bb: busboy.Busboy;
  try {
    bb = busboy({ headers: req.headers, limits: { fileSize: opts.maxFileBytes, files: 8, fields: 100, fieldSize: MAX_FIELD_BYTES, parts: 120 } });
  } catch {
    throw invalidRequest('The multipart body has no boundary in its Content-Type.', null, 'invalid_multipart');
  }
  bb.on('file', (rawName, stream) => {
    const name = rawName.endsWith('[]') ? rawName.slice(0, -2) : rawName;
    if (!opts.fileFields.includes(name)) {
      refuse(invalidRequest(`${rawName.slice(0, 100)} cannot be a file; files are accepted as ${opts.fileFields.join(', ')}.`, rawName.slice(0, 100), 'unknown_parameter'));
      stream.resume();
      return;
    }
    writes.push(writeFile(stream, join(opts.dir, randomUUID()), name, opts.maxFileBytes, refuse).then((f) => void (files[name] ??= []).push(f)));
  });
  bb.on('field', (name, value, info) => {
    if (info.valueTruncated) refuse(invalidRequest(`${name.slice(0, 100)} is longer than ${MAX_FIELD_BYTES} bytes.`, name.slice(0, 100)));
    else if (Object.hasOwn(fields, name)) refuse(invalidRequest(`${name.slice(0, 100)} is sent twice.`, name.slice(0, 100)));
    else fields[name] = value;
  });
  bb.on('filesLimit', () => refuse(invalidRequest('Too many files: send one image (and at most one mask).', 'image', 'too_many_files')));
  bb.on('fieldsLimit', () => refuse(invalidRequest('Too many form fields.', null, 'invalid_multipart')));
  bb.on('partsLimit', () => refuse(invalidRequest('Too many form parts.', null, 'invalid_multipart')));
  try {
    await pipeline(req, bb);
  } catch {
    refuse(invalidRequest('The multipart body is malformed or was not fully received.', null, 'invalid_multipart'));
  }
  await Promise.allSettled(writes);
  if (problem) throw problem;
  return { fields, files };
}

async function writeFile(stream: NodeJS.ReadableStream & { truncated?: boolean }, path: string, field: string, max: number, refuse: (e: ApiError) => void): Promise<UploadedFile> {
  const hash = createHash('sha256');
  let bytes = 0;
  stream.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  stream.on('limit', () =>
    refuse(new ApiError(413, `${field} is larger than ${max} bytes (EDIT_IMAGE_MAX_BYTES).`, { type: 'invalid_request_error', code: 'file_too_large', param: field })),
  );
  await pipeline(stream, createWriteStream(path));
  return { path, bytes, sha256: hash.digest('hex') };
}
