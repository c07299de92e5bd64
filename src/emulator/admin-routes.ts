/**
 * `/_emulator/*`: the test bed's control panel. No auth: it is a local tool,
 * and tests must be able to inspect billing without knowing the key.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Ctx, Route } from './context.js';
import { FaultSpecError } from './faults.js';
import { parseJsonBody, readBody, sendJson } from './http.js';
import { PriceTableError, parsePriceTable, sumUsd } from './pricing.js';

export function jobView(ctx: Ctx, id: string): Record<string, unknown> | undefined {
  const job = ctx.engine.get(id);
  if (!job) return undefined;
  return { ...structuredClone(job), queue_position: ctx.engine.queuePosition(job) };
}

async function jsonBody(req: IncomingMessage, res: ServerResponse): Promise<{ ok: true; value: unknown } | { ok: false }> {
  const parsed = parseJsonBody(await readBody(req, 1024 * 1024));
  if (!parsed.ok) {
    sendJson(res, 400, { detail: `Invalid JSON: ${parsed.message}` });
    return { ok: false };
  }
  return parsed;
}

type AdminRoute = (ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route) => void | Promise<void>;

const health: AdminRoute = (ctx, _req, res) =>
  sendJson(res, 200, {
    status: 'ok',
    uptime_s: Math.round((Date.now() - ctx.started) / 1000),
    jobs: ctx.engine.list().length,
    jobs_created: ctx.engine.seq,
    pending_webhooks: ctx.webhooks.pending(),
    image_mode: ctx.options.imageMode,
    latency_ms: ctx.options.latencyMs,
    public_url: ctx.publicUrl(),
    concurrency: Number.isFinite(ctx.options.concurrency) ? ctx.options.concurrency : null,
    running: ctx.engine.running,
    media_ttl_s: ctx.options.mediaTtlS,
    kinder: [...ctx.options.kinder],
  });

const armFaults: AdminRoute = async (ctx, req, res) => {
  const body = await jsonBody(req, res);
  if (!body.ok) return;
  try {
    sendJson(res, 201, { faults: ctx.faults.arm(body.value) });
  } catch (err) {
    if (!(err instanceof FaultSpecError)) throw err;
    sendJson(res, 400, { detail: err.message });
  }
};

const setPrices: AdminRoute = async (ctx, req, res, route) => {
  const body = await jsonBody(req, res);
  if (!body.ok) return;
  try {
    ctx.setPrices(parsePriceTable(body.value), route.query.get('merge') === '1' || route.query.get('merge') === 'true');
  } catch (err) {
    if (!(err instanceof PriceTableError)) throw err;
    sendJson(res, 400, { detail: err.message });
    return;
  }
  sendJson(res, 200, ctx.prices());
};

/** `<method> <path under /_emulator/>` → its handler. */
const ROUTES: Record<string, AdminRoute> = {
  'GET health': health,
  'GET billing': (ctx, _req, res) => {
    const entries = ctx.engine.billing();
    sendJson(res, 200, { entries, total_usd: sumUsd(entries.map((e) => e.usd)) });
  },
  'POST reset': (ctx, _req, res) => {
    ctx.reset();
    sendJson(res, 200, { status: 'reset' });
  },
  'GET faults': (ctx, _req, res) => sendJson(res, 200, { faults: ctx.faults.list() }),
  'POST faults': armFaults,
  'DELETE faults': (ctx, _req, res) => {
    ctx.faults.clear();
    sendJson(res, 200, { faults: [] });
  },
  'GET jobs': (ctx, _req, res) => sendJson(res, 200, { jobs: ctx.engine.list().map((j) => jobView(ctx, j.request_id)) }),
  'GET prices': (ctx, _req, res) => sendJson(res, 200, ctx.prices()),
  'POST prices': setPrices,
  'GET webhooks': (ctx, _req, res) => sendJson(res, 200, { deliveries: ctx.webhooks.deliveries() }),
  'GET jwks.json': (ctx, _req, res) => sendJson(res, 200, ctx.signer.jwks),
  'GET .well-known/jwks.json': (ctx, _req, res) => sendJson(res, 200, ctx.signer.jwks),
  'GET stats': (ctx, _req, res) => sendJson(res, 200, { calls: { ...ctx.calls } }),
};

export async function admin(ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
  ctx.calls.admin += 1;
  const path = route.segments.join('/');
  const method = req.method ?? 'GET';
  const handler = Object.hasOwn(ROUTES, `${method} ${path}`) ? ROUTES[`${method} ${path}`] : undefined;
  if (handler) {
    await handler(ctx, req, res, route);
    return;
  }
  const jobRoute = /^jobs\/([^/]+)(\/finish)?$/.exec(path);
  if (jobRoute) {
    const id = jobRoute[1]!;
    if (!jobRoute[2] && method === 'GET') {
      const view = jobView(ctx, id);
      if (view) sendJson(res, 200, view);
      else sendJson(res, 404, { detail: `Request ${id} not found` });
      return;
    }
    if (jobRoute[2] && method === 'POST') {
      if (ctx.engine.finishNow(id)) sendJson(res, 200, jobView(ctx, id));
      else sendJson(res, 404, { detail: `No unfinished request ${id}` });
      return;
    }
  }
  sendJson(res, 404, { detail: `Unknown admin route ${method} /_emulator/${path}` });
}
