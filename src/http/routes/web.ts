import { Router, type RequestHandler, type Response } from 'express';
import helmet from 'helmet';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { notFound } from '../../errors.js';

/**
 * The pages for people: the playground (`/`), the usage chart (`/usage`) and
 * the API reference (`/docs`), plus what they load. No authentication here:
 * the pages hold no data; the person types a key into the page, and the page
 * sends it to the API like any other client would.
 *
 * Every file served is named in a list built at start-up, so a request can
 * only ever name one of those files, and every route has a fixed path for
 * the access log and metrics.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const WEB_DIR = `${ROOT}src/web`;
const SCHEMAS_DIR = `${ROOT}schemas`;
const SWAGGER_UI_DIR = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));
const SWAGGER_UI_FILES = new Set(['swagger-ui-bundle.js', 'swagger-ui.css']);

const PAGES: Record<string, string> = { '/': 'playground.html', '/usage': 'usage.html', '/docs': 'docs.html' };

/**
 * helmet's policy, changed for the HTML pages only (the API keeps helmet's
 * defaults). Images may also come from https origins, because with real fal
 * the generated images are on fal's CDN. No `upgrade-insecure-requests`: it
 * would make a browser fetch the page's own scripts over https when the
 * service is reached over plain http (the default), and the page would load
 * blank. Styles and fonts come from this origin only, since the pages load
 * nothing from anywhere else (Swagger UI sets inline styles, hence
 * 'unsafe-inline' for styles, as helmet has it).
 */
const pageCsp: RequestHandler = helmet.contentSecurityPolicy({
  directives: {
    'img-src': ["'self'", 'data:', 'https:'],
    'style-src': ["'self'", "'unsafe-inline'"],
    'font-src': ["'self'", 'data:'],
    'upgrade-insecure-requests': null,
  },
});

function listFiles(dir: string, pattern: RegExp): Set<string> {
  return new Set(readdirSync(dir).filter((f) => pattern.test(f)));
}

function send(res: Response, root: string, file: string, contentType?: string): Promise<void> {
  // Pages and assets change with each release and carry no version in their
  // names: the browser revalidates (ETag) instead of running stale code.
  if (contentType) res.type(contentType);
  return new Promise((resolve, reject) => {
    // Once headers are out, a failure is the client leaving mid-file: nothing left to answer, nothing to log.
    res.sendFile(file, { root, dotfiles: 'deny', headers: { 'cache-control': 'no-cache' } }, (err) => (err && !res.headersSent ? reject(err) : resolve()));
  });
}

export function webRouter(): Router {
  const router = Router();
  const assets = listFiles(WEB_DIR, /^[a-z0-9-]+\.(?:js|css)$/);
  const schemas = listFiles(SCHEMAS_DIR, /^[a-z0-9.-]+\.json$/);

  for (const [path, file] of Object.entries(PAGES)) {
    router.get(path, pageCsp, (_req, res) => send(res, WEB_DIR, file));
  }
  router.get('/web/:file', (req, res) => {
    if (!assets.has(req.params.file)) throw notFound('No such file.');
    return send(res, WEB_DIR, req.params.file);
  });
  router.get('/docs/assets/:file', (req, res) => {
    if (!SWAGGER_UI_FILES.has(req.params.file)) throw notFound('No such file.');
    return send(res, SWAGGER_UI_DIR, req.params.file);
  });
  router.get('/openapi.yaml', (_req, res) => send(res, ROOT, 'openapi.yaml', 'application/yaml; charset=utf-8'));
  // openapi.yaml refers to `./schemas/*.json`; served here, a viewer resolves them relative to the document.
  router.get('/schemas/:file', (req, res) => {
    if (!schemas.has(req.params.file)) throw notFound('No such schema.');
    return send(res, SCHEMAS_DIR, req.params.file, 'application/json; charset=utf-8');
  });
  return router;
}
