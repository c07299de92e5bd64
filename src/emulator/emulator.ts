/**
 * Composition and addressing. A request meant for `https://<host>/<path>`
 * arrives as `/<host>/<path>` (the `FAL_BASE_URL` contract, see
 * src/fal/redirect-fetch.ts) or, fal-proxy style, on any path with the real
 * URL in `x-fal-target-url`. URLs the emulator hands out itself
 * (`<publicUrl>/v3.fal.media/...`) may come back through a redirecting fetch
 * as `/<emulator host>/v3.fal.media/...`; that self-prefix is stripped.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { admin, jobView } from './admin-routes.js';
import { parseKinder, type Kinder } from './behaviours.js';
import type { Ctx, EmulatorLogger, JobListener, Route } from './context.js';
import { endpointTable, ENDPOINTS, type EndpointSpec } from './endpoints.js';
import {
  createFaultBook,
  FaultSpecError,
  normalizeFault,
  type ArmedFault,
  type FaultPhase,
  type FaultSpec,
} from './faults.js';
import { headerValue, sendJson } from './http.js';
import { createImageCache, parseImageToken, type ImageMode } from './images.js';
import { createEngine, type BillingEntry, type JobRecord } from './jobs.js';
import { media, rest } from './media-routes.js';
import { webhookBody } from './output.js';
import {
  DEFAULT_PRICES_FILE,
  loadPriceTable,
  missingPrices,
  PriceTableError,
  sumUsd,
  type PriceTable,
} from './pricing.js';
import { platform } from './platform-routes.js';
import { parseRequestRoute, requestRoute, run, submit } from './queue-routes.js';
import { createStateWriter, readState, type StateWriter } from './state.js';
import { createFileStore } from './storage.js';
import {
  createSigner,
  createWebhookSender,
  DEFAULT_WEBHOOK_RETRY,
  type DeliveryAttempt,
  type Jwk,
  type WebhookRetryOptions,
} from './webhooks.js';

export interface EmulatorOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Total queue + inference time per job; default 50 ms (a quarter of it queued). */
  latencyMs?: number;
  /** "entropy" (default): per-image content with realistic sizes; "cheap": one cached image per size and format. */
  imageMode?: ImageMode;
  /** A price table object; wins over pricesFile. */
  prices?: PriceTable;
  /** Default: the emulator's own src/emulator/prices.json. */
  pricesFile?: string;
  /** Persist jobs, billing and the webhook key here (atomic, debounced writes) and reload them on start. */
  stateFile?: string;
  /** Debounce for state writes; default 100 ms. */
  stateDebounceMs?: number;
  /** When set, only `Authorization: Key <emulatorKey>` is accepted. */
  emulatorKey?: string;
  /** Base of image and file URLs; default the emulator's own URL. */
  publicUrl?: string;
  logger?: EmulatorLogger;
  /** Webhook retry policy; default 11 attempts, 1 s doubling, 15 s timeout. */
  webhookRetry?: Partial<WebhookRetryOptions>;
  /** The `X-Fal-Webhook-User-Id` sent with webhooks; default "emulator-user". */
  webhookUserId?: string;
  /** Endpoint table; default ENDPOINTS. */
  endpoints?: readonly EndpointSpec[];
  /** Bytes of rendered images kept in memory; default 256 MiB. */
  imageCacheBytes?: number;
  /** Bytes of uploaded files kept in memory; default 512 MiB. */
  storageBytes?: number;
  /** Completed jobs beyond this are forgotten, oldest first; default 100000. */
  maxJobs?: number;
  /** Largest image the emulator renders, in pixels; default 16777216 (4096×4096). */
  maxRenderPixels?: number;
  /** Interval of status-stream updates while a job waits; default 10 s. */
  streamHeartbeatMs?: number;
  /** Jobs running at once (fal's per-account concurrency limit); the rest wait IN_QUEUE. Default 10. */
  concurrency?: number;
  /** Seconds output media stays downloadable; default 3600. `null` (or kinder `media_never_expires`): forever. */
  mediaTtlS?: number | null;
  /** Real-fal behaviours to turn off, by name (see behaviours.ts); a test that needs one says so. */
  kinder?: readonly Kinder[];
}

export interface Emulator {
  /** `http://127.0.0.1:PORT`, no trailing slash. */
  readonly url: string;
  readonly port: number;
  readonly host: string;
  readonly publicUrl: string;
  /** Closes the server, every socket and every timer; flushes the state file. */
  close(): Promise<void>;
  /** Forgets jobs, billing, faults, uploads and webhook deliveries; restores the configured price table. */
  reset(): void;
  billing(): BillingEntry[];
  /** Sum of billing usd, decimal string. */
  billingTotal(): string;
  armFault(spec: FaultSpec | FaultSpec[]): ArmedFault[];
  faults(): ArmedFault[];
  clearFaults(): void;
  jobs(): Array<JobRecord & { queue_position: number }>;
  job(requestId: string): (JobRecord & { queue_position: number }) | undefined;
  /** Completes a job now (e.g. one held by never_finish). */
  finishJob(requestId: string): boolean;
  prices(): PriceTable;
  /** Replaces (or merges into) the price table; throws if a served endpoint would be left unpriced. */
  setPrices(table: PriceTable, opts?: { merge?: boolean }): void;
  webhookDeliveries(): DeliveryAttempt[];
  jwks(): { keys: Jwk[] };
  /** HTTP calls seen per phase (submit, status, stream, result, cancel, run, upload, files, platform, admin). */
  stats(): Record<string, number>;
  /** Waits for pending state-file writes. */
  flush(): Promise<void>;
}

const SILENT: EmulatorLogger = { info() {}, warn() {}, error() {}, debug() {} };
const MEDIA_HOSTS = new Set(['v3.fal.media', 'v3b.fal.media', 'v2.fal.media', 'fal.media']);
const REST_HOSTS = new Set(['rest.fal.ai', 'rest.alpha.fal.ai']);
/** fal's Platform API (request listing). */
const PLATFORM_HOST = 'api.fal.ai';
const FAULT_HEADER = 'x-emulator-fault';

type Normalized = ReturnType<typeof normalizeFault>;

function zeroCalls(): Ctx['calls'] {
  return { submit: 0, status: 0, stream: 0, result: 0, cancel: 0, run: 0, upload: 0, files: 0, platform: 0, admin: 0 };
}

export async function startEmulator(opts: EmulatorOptions = {}): Promise<Emulator> {
  const logger = opts.logger ?? SILENT;
  const kinder = parseKinder(opts.kinder);
  const concurrency = kinder.has('unlimited_concurrency') ? Infinity : (opts.concurrency ?? 10);
  if (!(concurrency >= 1)) throw new RangeError('concurrency must be at least 1');
  const mediaTtlS = kinder.has('media_never_expires') ? null : opts.mediaTtlS === undefined ? 3600 : opts.mediaTtlS;
  const endpointList = opts.endpoints ?? ENDPOINTS;
  const endpoints = endpointTable(endpointList);
  const priceKeys = [...new Set(endpointList.map((e) => e.priceKey))];
  const initialPrices = opts.prices ?? loadPriceTable(opts.pricesFile ?? DEFAULT_PRICES_FILE);
  const unpriced = missingPrices(initialPrices, priceKeys);
  if (unpriced.length > 0) throw new PriceTableError(`price table has no entry for: ${unpriced.join(', ')}`);
  let prices = structuredClone(initialPrices);

  const state = opts.stateFile ? readState(opts.stateFile) : undefined;
  const signer = createSigner(state?.webhook_private_key_pem);
  const webhooks = createWebhookSender({
    signer,
    userId: opts.webhookUserId ?? 'emulator-user',
    retry: { ...DEFAULT_WEBHOOK_RETRY, ...opts.webhookRetry },
    onLog: (e) => {
      if (!e.ok) logger.warn({ webhook: e }, 'emulator webhook delivery failed');
    },
  });

  const listeners = new Map<string, Set<JobListener>>();
  const sleeps = new Set<NodeJS.Timeout>();
  let writer: StateWriter | undefined;
  let calls = zeroCalls();
  let publicUrl = '';
  // Requests carrying an `x-emulator-fault` header, parsed once.
  const headerFaults = new WeakMap<IncomingMessage, Normalized[]>();

  const persist = () => writer?.schedule();

  const deliverWebhook = (job: JobRecord) => {
    const hook = job.webhook;
    if (!hook || hook.state !== 'pending') return;
    webhookBody(ctx, job).then(
      (body) =>
        webhooks.send(job.request_id, hook.url, body, (ok, attempts) => {
          hook.state = ok ? 'delivered' : 'failed';
          hook.attempts = attempts;
          persist();
        }),
      (err: unknown) => logger.error({ err, request_id: job.request_id }, 'emulator could not build webhook body'),
    );
  };

  const engine = createEngine({
    latencyMs: opts.latencyMs ?? 50,
    imageMode: opts.imageMode ?? 'entropy',
    prices: () => prices,
    endpoints,
    maxJobs: opts.maxJobs ?? 100000,
    concurrency,
    billFailures: !kinder.has('unbilled_failures'),
    cancelStopsRunning: kinder.has('cancel_stops_running'),
    onEvent(job, event) {
      const set = listeners.get(job.request_id);
      if (set) for (const fn of [...set]) fn(job, event);
      if (event === 'removed') listeners.delete(job.request_id);
      if (event === 'completed') deliverWebhook(job);
      persist();
    },
    onError(err, job) {
      logger.error({ err, request_id: job.request_id }, 'emulator job error');
    },
  });

  const faults = createFaultBook();
  const files = createFileStore(opts.storageBytes ?? 512 * 1024 * 1024);
  const images = createImageCache(opts.imageCacheBytes ?? 256 * 1024 * 1024);

  const ctx: Ctx = {
    engine,
    faults,
    endpoints,
    files,
    images,
    signer,
    webhooks,
    logger,
    started: Date.now(),
    options: {
      latencyMs: opts.latencyMs ?? 50,
      imageMode: opts.imageMode ?? 'entropy',
      emulatorKey: opts.emulatorKey,
      maxRenderPixels: opts.maxRenderPixels ?? 4096 * 4096,
      streamHeartbeatMs: opts.streamHeartbeatMs ?? 10000,
      lateValidation: !kinder.has('submit_validation'),
      mediaTtlS,
      concurrency,
      kinder,
      jsonBodyLimit: 50 * 1024 * 1024,
      uploadLimit: 100 * 1024 * 1024,
    },
    publicUrl: () => publicUrl,
    mediaMissing(url) {
      const segs = mediaSegments(url);
      if (!segs) return false;
      const [files, first, second] = segs;
      if (files !== 'files' || first === undefined || second === undefined) return true;
      if (first === 'emulated') {
        const spec = parseImageToken(second);
        return !spec || (spec.expiresAt !== undefined && spec.expiresAt * 1000 <= Date.now());
      }
      return ctx.files.get(first, second) === undefined;
    },
    prices: () => structuredClone(prices),
    setPrices(table, merge) {
      const next: PriceTable = merge
        ? { ...prices, ...table, endpoints: { ...prices.endpoints, ...table.endpoints } }
        : structuredClone(table);
      const missing = missingPrices(next, priceKeys);
      if (missing.length > 0) throw new PriceTableError(`price table has no entry for: ${missing.join(', ')}`);
      prices = next;
    },
    resetPrices() {
      prices = structuredClone(initialPrices);
    },
    get calls() {
      return calls;
    },
    listen(jobId, fn) {
      let set = listeners.get(jobId);
      if (!set) listeners.set(jobId, (set = new Set()));
      set.add(fn);
      return () => {
        const s = listeners.get(jobId);
        if (!s) return;
        s.delete(fn);
        if (s.size === 0) listeners.delete(jobId);
      };
    },
    takeFault(req, phase, kinds, m) {
      for (const f of headerFaults.get(req) ?? []) {
        if (!f.phase.includes(phase) || !kinds.includes(f.kind)) continue;
        if (f.endpoint !== undefined && f.endpoint !== m.endpoint) continue;
        if (f.prompt_contains !== undefined && !(m.prompt ?? '').includes(f.prompt_contains)) continue;
        return { ...f, id: 'header', remaining: 0, hits: 1 };
      }
      return faults.take(phase, kinds, m);
    },
    sleep(ms) {
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          sleeps.delete(t);
          resolve();
        }, ms);
        sleeps.add(t);
      });
    },
    reset() {
      engine.clear();
      faults.clear();
      webhooks.cancelAll();
      webhooks.clearLog();
      files.clear();
      prices = structuredClone(initialPrices);
      calls = zeroCalls();
      persist();
    },
    persist,
  };

  if (opts.stateFile) {
    if (state) {
      engine.restore(state.jobs, state.billing, state.seq);
      for (const job of engine.list()) if (job.status === 'COMPLETED') deliverWebhook(job);
    }
    writer = createStateWriter(
      opts.stateFile,
      () => ({
        version: 1,
        saved_at: new Date().toISOString(),
        seq: engine.seq,
        webhook_private_key_pem: signer.privateKeyPem,
        jobs: engine.list(),
        billing: engine.billing(),
      }),
      opts.stateDebounceMs ?? 100,
      (err) => logger.error({ err }, 'emulator could not write its state file'),
    );
    persist();
  }

  const host = opts.host ?? '127.0.0.1';
  let selfHosts = new Set<string>();
  let prefix: string[] = [];
  /** The path under a CDN host, for a URL that names this emulator's CDN; undefined for any other URL. */
  function mediaSegments(url: string): string[] | undefined {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return undefined;
    }
    let segs = u.pathname.split('/').filter((s) => s !== '');
    if (MEDIA_HOSTS.has(u.host.toLowerCase())) return segs;
    if (!selfHosts.has(u.host.toLowerCase())) return undefined;
    if (prefix.length > 0 && prefix.every((p, k) => segs[k] === p)) segs = segs.slice(prefix.length);
    const first = segs.shift()?.toLowerCase();
    return first !== undefined && MEDIA_HOSTS.has(first) ? segs : undefined;
  }

  const dispatch = async (req: IncomingMessage, res: ServerResponse) => {
    let hostName: string;
    let pathname: string;
    let search: string;
    const target = headerValue(req, 'x-fal-target-url');
    if (target) {
      let u: URL;
      try {
        u = new URL(target);
      } catch {
        sendJson(res, 400, { detail: 'x-fal-target-url is not a URL' });
        return;
      }
      hostName = u.host;
      pathname = u.pathname;
      search = u.search;
    } else {
      const raw = req.url ?? '/';
      const q = raw.indexOf('?');
      pathname = q < 0 ? raw : raw.slice(0, q);
      search = q < 0 ? '' : raw.slice(q);
      hostName = '';
    }
    let segs: string[];
    try {
      segs = pathname
        .split('/')
        .filter((s) => s !== '')
        .map((s) => decodeURIComponent(s));
    } catch {
      sendJson(res, 400, { detail: 'Malformed URL path' });
      return;
    }
    if (hostName) segs.unshift(hostName);
    const ownHost = headerValue(req, 'host')?.toLowerCase();
    for (let i = 0; i < 4; i++) {
      const first = segs[0]?.toLowerCase();
      if (first !== undefined && (selfHosts.has(first) || first === ownHost)) {
        segs.shift();
      } else if (prefix.length > 0 && prefix.every((p, k) => segs[k] === p)) {
        segs = segs.slice(prefix.length);
      } else {
        break;
      }
    }
    const siteHost = (segs.shift() ?? '').toLowerCase();
    const route: Route = { segments: segs, query: new URLSearchParams(search) };

    if (siteHost === '_emulator') {
      await admin(ctx, req, res, route);
      return;
    }
    const faultHeader = headerValue(req, FAULT_HEADER);
    if (faultHeader) {
      try {
        const raw: unknown = JSON.parse(faultHeader);
        const list = Array.isArray(raw) ? raw : [raw];
        // The header names faults for this call; the phase defaults to the one it hits.
        headerFaults.set(
          req,
          list.map((f) => normalizeFault(f, phaseOf(siteHost, route, req.method))),
        );
      } catch (err) {
        const msg = err instanceof FaultSpecError ? err.message : 'not JSON';
        sendJson(res, 400, { detail: `invalid ${FAULT_HEADER} header: ${msg}` });
        return;
      }
    }
    if (siteHost === 'queue.fal.run') {
      const r = parseRequestRoute(route.segments);
      if (r) await requestRoute(ctx, req, res, r, route);
      else if (req.method === 'POST') await submit(ctx, req, res, route);
      else sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
      return;
    }
    if (siteHost === 'fal.run') {
      if (req.method === 'POST') await run(ctx, req, res, route);
      else sendJson(res, 405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
      return;
    }
    if (MEDIA_HOSTS.has(siteHost)) {
      await media(ctx, req, res, route);
      return;
    }
    if (REST_HOSTS.has(siteHost)) {
      await rest(ctx, req, res, route);
      return;
    }
    if (siteHost === PLATFORM_HOST) {
      await platform(ctx, req, res, route);
      return;
    }
    sendJson(res, 404, {
      detail: `The fal emulator serves host-prefixed paths such as /queue.fal.run/<endpoint>; no route for /${[siteHost, ...segs].join('/')}`,
    });
  };

  const server: Server = createServer((req, res) => {
    dispatch(req, res).catch((err: unknown) => {
      logger.error({ err, url: req.url }, 'emulator request failed');
      if (!res.headersSent) sendJson(res, 500, { detail: 'Internal emulator error' });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 65000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  const url = `http://${urlHost}:${port}`;
  publicUrl = (opts.publicUrl ?? url).replace(/\/+$/, '');
  const pub = new URL(publicUrl);
  selfHosts = new Set([`${urlHost}:${port}`, `127.0.0.1:${port}`, `localhost:${port}`, pub.host.toLowerCase()]);
  prefix = pub.pathname.split('/').filter((s) => s !== '');
  logger.info({ url, publicUrl, imageMode: ctx.options.imageMode, latencyMs: ctx.options.latencyMs }, 'fal emulator listening');

  let closing: Promise<void> | undefined;
  const view = (id: string) => jobView(ctx, id) as (JobRecord & { queue_position: number }) | undefined;

  return {
    url,
    port,
    host,
    publicUrl,
    close() {
      closing ??= (async () => {
        for (const t of sleeps) clearTimeout(t);
        sleeps.clear();
        engine.close();
        webhooks.cancelAll();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        await writer?.flush();
      })();
      return closing;
    },
    reset: () => ctx.reset(),
    billing: () => engine.billing(),
    billingTotal: () => sumUsd(engine.billing().map((e) => e.usd)),
    armFault: (spec) => faults.arm(spec),
    faults: () => faults.list(),
    clearFaults: () => faults.clear(),
    jobs: () => engine.list().map((j) => view(j.request_id)!),
    job: (id) => view(id),
    finishJob: (id) => engine.finishNow(id),
    prices: () => ctx.prices(),
    setPrices: (table, o) => ctx.setPrices(table, o?.merge ?? false),
    webhookDeliveries: () => webhooks.deliveries(),
    jwks: () => structuredClone(signer.jwks),
    stats: () => ({ ...calls }),
    flush: async () => {
      await writer?.flush();
    },
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
