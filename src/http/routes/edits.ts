import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Request, RequestHandler, Response } from 'express';
import { invalidRequest } from '../../errors.js';
import { prepareEdit, type EditInputsDeps } from '../../images/edit-inputs.js';
import type { CanonicalRequest } from '../../images/normalize.js';
import { jsonBody } from '../body.js';
import { coerceFormFields } from '../form-fields.js';
import { readMultipart, type UploadedFile } from '../multipart.js';
import type { RequestLocals } from '../waiting-requests.js';
import { answerRequest, type ImagesRouteDeps } from './images.js';

export interface EditsRouteDeps extends ImagesRouteDeps {
  edits: EditInputsDeps;
  /** EDIT_IMAGE_MAX_BYTES: the largest image or mask file. */
  maxFileBytes: number;
}

const isMultipart = (req: Request) => (req.get('content-type') ?? '').toLowerCase().startsWith('multipart/form-data');

/** An edit arrives as multipart/form-data (the openai SDK) or as JSON with image_url (aimlapi-style). */
export function editBody(maxBodyBytes: number): RequestHandler[] {
  const [requireJson, parse] = jsonBody(maxBodyBytes) as [RequestHandler, RequestHandler];
  return [(req, res, next) => (isMultipart(req) ? next() : requireJson(req, res, next)), (req, res, next) => (isMultipart(req) ? next() : parse(req, res, next))];
}

/**
 * `POST /v1/images/edits`: the inputs are checked (and uploaded to fal)
 * before the answer starts, which is then written exactly as a
 * generation's. Uploaded files live in a directory of their own, removed
 * once they are on fal (or refused).
 */
export function editsHandler(deps: EditsRouteDeps): (req: Request, res: Response) => Promise<void> {
  return async (req, res) => {
    const controller = (res.locals as RequestLocals).caller!;
    const opts = { strictParams: deps.strictParams };
    if (!isMultipart(req)) {
      const body = req.body as Record<string, unknown>;
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidRequest('The request body must be a JSON object or multipart/form-data.', null);
      const canonical = await prepareEdit(deps.edits, { body }, opts, controller.signal);
      return answerRequest(deps, req, res, canonical, body);
    }
    const dir = await mkdtemp(join(tmpdir(), 'gw-edit-'));
    let prepared: { canonical: CanonicalRequest; idemBody: unknown };
    try {
      const form = await readMultipart(req, { dir, maxFileBytes: deps.maxFileBytes, fileFields: ['image', 'mask'] });
      const image = one(form.files['image'], 'image');
      const mask = one(form.files['mask'], 'mask');
      const body = coerceFormFields(deps.registry, form.fields);
      const canonical = await prepareEdit({ ...deps.edits, tmpDir: dir }, { body, image, mask }, opts, controller.signal);
      // A replay under the same key must carry the same files, not only the same fields.
      prepared = { canonical, idemBody: { ...form.fields, image_sha256: image?.sha256 ?? null, mask_sha256: mask?.sha256 ?? null } };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return answerRequest(deps, req, res, prepared.canonical, prepared.idemBody);
  };
}

/**
 * `POST /v1/images/generations` when edits are served: a JSON body naming an
 * input image (`image_url` or `mask_url`, as aimlapi takes them) is an edit
 * of the model's image, answered by the edits handler; any other body is a
 * generation.
 */
export function generationsOrEdits(edits: Handler, generations: Handler): Handler {
  return (req, res) => (isEditBody(req.body) ? edits(req, res) : generations(req, res));
}

type Handler = (req: Request, res: Response) => Promise<void>;

function isEditBody(body: unknown): body is Record<string, unknown> {
  return typeof body === 'object' && body !== null && !Array.isArray(body) && (Object.hasOwn(body, 'image_url') || Object.hasOwn(body, 'mask_url'));
}

/** Our models take exactly one image (and one mask). */
function one(files: UploadedFile[] | undefined, field: 'image' | 'mask'): UploadedFile | undefined {
  if (files && files.length > 1) throw invalidRequest(`Send one ${field} (got ${files.length}): the models served here edit a single image.`, field, 'too_many_files');
  return files?.[0];
}
