/**
 * Addressing and dispatch. A request meant for `https://<host>/<path>`
 * arrives as `/<host>/<path>` (the `FAL_BASE_URL` contract, see
 * src/fal/redirect-fetch.ts) or, fal-proxy style, on any path with the real
 * URL in `x-fal-target-url`. URLs the emulator hands out itself
 * (`<publicUrl>/v3.fal.media/...`) may come back through a redirecting fetch
 * as `/<emulator host>/v3.fal.media/...`; that self-prefix is stripped.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { admin } from './admin-routes.js';
import type { Ctx, Route } from './context.js';
import { FaultSpecError, normalizeFault, type FaultPhase } from './faults.js';
import { headerValue, sendJson } from './http.js';
import { media, rest } from './media-routes.js';
import { platform } from './platform-routes.js';
import { parseRequestRoute, requestRoute, run, submit } from './queue-routes.js';

const MEDIA_HOSTS = new Set(['v3.fal.media', 'v3b.fal.media', 'v2.fal.media', 'fal.media']);
const REST_HOSTS = new Set(['rest.fal.ai', 'rest.alpha.fal.ai']);
/** fal's Platform API (request listing). */
const PLATFORM_HOST = 'api.fal.ai';
const FAULT_HEADER = 'x-emulator-fault';

export type HeaderFault = ReturnType<typeof normalizeFault>;

/** Requests carrying an `x-emulator-fault` header, parsed once; read by `Ctx.takeFault`. */
export const headerFaults = new WeakMap<IncomingMessage, HeaderFault[]>();

/** How this emulator is reached: its own host:port names and the path of its public URL. Set once it listens. */
export interface Addressing {
  selfHosts: Set<string>;
  prefix: string[];
}

/** The path under a CDN host, for a URL that names this emulator's CDN; undefined for any other URL. */
export function mediaSegments(url: string, at: Addressing): string[] | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  let segs = u.pathname.split('/').filter((s) => s !== '');
  if (MEDIA_HOSTS.has(u.host.toLowerCase())) return segs;
  if (!at.selfHosts.has(u.host.toLowerCase())) return undefined;
  if (at.prefix.length > 0 && at.prefix.every((p, k) => segs[k] === p)) segs = segs.slice(at.prefix.length);
  const first = segs.shift()?.toLowerCase();
  return first !== undefined && MEDIA_HOSTS.has(first) ? segs : undefined;
}

/** The site host and route a request addresses, or the 400 it is answered with. */
function resolve(req: IncomingMessage, at: Addressing): { siteHost: string; route: Route } | { error: string } {
  let hostName = '';
  let pathname: string;
  let search: string;
  const target = headerValue(req, 'x-fal-target-url');
  if (target) {
    let u: URL;
    try {
      u = new URL(target);
    } catch {
      return { error: 'x-fal-target-url is not a URL' };
    }
    hostName = u.host;
    pathname = u.pathname;
    search = u.search;
  } else {
    const raw = req.url ?? '/';
    const q = raw.indexOf('?');
    pathname = q < 0 ? raw : raw.slice(0, q);
    search = q < 0 ? '' : raw.slice(q);
  }
  let segs: string[];
  try {
    segs = pathname
      .split('/')
      .filter((s) => s !== '')
      .map((s) => decodeURIComponent(s));
  } catch {
    return { error: 'Malformed URL path' };
  }
  if (hostName) segs.unshift(hostName);
  const ownHost = headerValue(req, 'host')?.toLowerCase();
  for (let i = 0; i < 4; i++) {
    const first = segs[0]?.toLowerCase();
    if (first !== undefined && (at.selfHosts.has(first) || first === ownHost)) {
      segs.shift();
    } else if (at.prefix.length > 0 && at.prefix.every((p, k) => segs[k] === p)) {
      segs = segs.slice(at.prefix.length);
    } else {
      break;
    }
  }
  const siteHost = (segs.shift() ?? '').toLowerCase();
  return { siteHost, route: { segments: segs, query: new URLSearchParams(search) } };
}

/** Parses the request's `x-emulator-fault` header into `headerFaults`; false when it was answered 400. */
function readFaultHeader(req: IncomingMessage, res: ServerResponse, siteHost: string, route: Route): boolean {
  const faultHeader = headerValue(req, FAULT_HEADER);
  if (!faultHeader) return true;
  try {
    const raw: unknown = JSON.parse(faultHeader);
    const list = Array.isArray(raw) ? raw : [raw];
    // The header names faults for this call; the phase defaults to the one it hits.
    headerFaults.set(
      req,
      list.map((f) => normalizeFault(f, phaseOf(siteHost, route, req.method))),
    );
    return true;
  } catch (err) {
    const msg = err instanceof FaultSpecError ? err.message : 'not JSON';
    sendJson(res, 400, { detail: `invalid ${FAULT_HEADER} header: ${msg}` });
    return false;
  }
}

export function createDispatch(ctx: Ctx, at: Addressing): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    const resolved = resolve(req, at);
    if ('error' in resolved) {
      sendJson(res, 400, { detail: resolved.error });
      return;
    }
    const { siteHost, route } = resolved;
    if (siteHost === '_emulator') {
      await admin(ctx, req, res, route);
      return;
    }
    if (!readFaultHeader(req, res, siteHost, route)) return;
    if (siteHost === 'queue.fal.run') {
      const r = parseRequestRoute(route.segments);
      if (r) await requestRoute(ctx, req, res, r, route);
      else if (req.method === 'POST') await submit(ctx, req, res, route);
      else sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    } else if (siteHost === 'fal.run') {
      if (req.method === 'POST') await run(ctx, req, res, route);
      else sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    } else if (MEDIA_HOSTS.has(siteHost)) {
      await media(ctx, req, res, route);
    } else if (REST_HOSTS.has(siteHost)) {
      await rest(ctx, req, res, route);
    } else if (siteHost === PLATFORM_HOST) {
      await platform(ctx, req, res, route);
    } else {
      sendJson(res, 404, {
        detail: `The fal emulator serves host-prefixed paths such as /queue.fal.run/<endpoint>; no route for /${[siteHost, ...route.segments].join('/')}`,
      });
    }
  };
}

/** The phase a request hits, for header faults that do not name one. */
function phaseOf(siteHost: string, route: Route, method: string | undefined): FaultPhase | undefined {
  if (siteHost === 'fal.run') return 'run';
  if (MEDIA_HOSTS.has(siteHost) || REST_HOSTS.has(siteHost)) return 'upload';
  if (siteHost !== 'queue.fal.run') return undefined;
  const r = parseRequestRoute(route.segments);
  if (!r) return method === 'POST' ? 'submit' : undefined;
  return r.action === 'unknown' ? undefined : r.action;
}
