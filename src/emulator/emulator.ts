/**
 * Composition: the emulator's parts (job engine, faults, storage, images,
 * webhooks, state file) wired into one context and served over HTTP.
 * Addressing and dispatch are in routing.ts.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jobView } from './admin-routes.js';
import { parseKinder, type Kinder } from './behaviours.js';
import type { Ctx, EmulatorLogger, JobListener } from './context.js';
import { endpointTable, ENDPOINTS, Z_IMAGE_TURBO_MAX_PIXELS } from './endpoints.js';
import { createFaultBook } from './faults.js';
import { sendJson } from './http.js';
import { createImageCache, parseImageToken } from './images.js';
import { inputBytes } from './edit-inputs.js';
import { createEngine, type Engine, type JobRecord } from './jobs.js';
import { webhookBody } from './output.js';
import { DEFAULT_PRICES_FILE, loadPriceTable, missingPrices, PriceTableError, sumUsd, type PriceTable } from './pricing.js';
import { createDispatch, headerFaults, mediaSegments, type Addressing } from './routing.js';
import { createStateWriter, readState, type StateWriter } from './state.js';
import { createFileStore } from './storage.js';
import { createSigner, createWebhookSender, DEFAULT_WEBHOOK_RETRY } from './webhooks.js';
import type { Emulator, EmulatorOptions } from './types.js';

export type { Emulator, EmulatorOptions } from './types.js';

const SILENT: EmulatorLogger = { info() {}, warn() {}, error() {}, debug() {} };

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
  // An edit's output is rendered from its input, read the way the job read it.
  const images = createImageCache(opts.imageCacheBytes ?? 256 * 1024 * 1024, (url) => inputBytes(ctx, url));

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
    options: contextOptions(opts, kinder, concurrency, mediaTtlS),
    publicUrl: () => publicUrl,
    mediaMissing(url) {
      const segs = mediaSegments(url, addressing);
      if (!segs) return false;
      const [files, first, second] = segs;
      if (files !== 'files' || first === undefined || second === undefined) return true;
      if (first === 'emulated') {
        const spec = parseImageToken(second);
        return !spec || (spec.expiresAt !== undefined && spec.expiresAt * 1000 <= Date.now());
      }
      return ctx.files.get(first, second) === undefined;
    },
    async mediaBytes(url) {
      const segs = mediaSegments(url, addressing);
      if (!segs) return 'foreign';
      const [files, first, second] = segs;
      if (files !== 'files' || first === undefined || second === undefined) return undefined;
      if (first !== 'emulated') return ctx.files.get(first, second)?.data;
      const spec = parseImageToken(second);
      if (!spec || (spec.expiresAt !== undefined && spec.expiresAt * 1000 <= Date.now())) return undefined;
      return ctx.images.get(spec).catch(() => undefined);
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

  if (opts.stateFile) writer = attachStateFile(opts.stateFile, state, engine, signer, deliverWebhook, opts.stateDebounceMs ?? 100, logger);
  persist();

  const host = opts.host ?? '127.0.0.1';
  const addressing: Addressing = { selfHosts: new Set(), prefix: [] };
  const dispatch = createDispatch(ctx, addressing);

  const { server, url, port } = await listen(opts.port ?? 0, host, dispatch, logger);
  publicUrl = (opts.publicUrl ?? url).replace(/\/+$/, '');
  const pub = new URL(publicUrl);
  const urlHost = new URL(url).host.replace(/:\d+$/, '');
  addressing.selfHosts = new Set([`${urlHost}:${port}`, `127.0.0.1:${port}`, `localhost:${port}`, pub.host.toLowerCase()]);
  addressing.prefix = pub.pathname.split('/').filter((s) => s !== '');
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

/** Serves `dispatch` on host:port; a handler's failure is a 500 (or a cut connection once the answer has started). */
async function listen(port: number, host: string, dispatch: ReturnType<typeof createDispatch>, logger: EmulatorLogger): Promise<{ server: Server; url: string; port: number }> {
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
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const urlHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return { server, url: `http://${urlHost}:${bound}`, port: bound };
}

/**
 * The emulator-only render limit's default: the largest image fal publishes a
 * bound for among the endpoints served (Z-Image Turbo's 4 MP), which is also
 * the largest any gateway model asks for (2048 × 2048). Endpoints that
 * publish no bound of their own (fal's generic ImageSize allows 14142 a side)
 * are held to it, so no request or crafted file URL makes the emulator
 * allocate more.
 */
export const DEFAULT_MAX_RENDER_PIXELS = Z_IMAGE_TURBO_MAX_PIXELS;

function contextOptions(opts: EmulatorOptions, kinder: ReadonlySet<Kinder>, concurrency: number, mediaTtlS: number | null): Ctx['options'] {
  return {
    latencyMs: opts.latencyMs ?? 50,
    imageMode: opts.imageMode ?? 'entropy',
    emulatorKey: opts.emulatorKey,
    maxRenderPixels: opts.maxRenderPixels ?? DEFAULT_MAX_RENDER_PIXELS,
    streamHeartbeatMs: opts.streamHeartbeatMs ?? 10000,
    lateValidation: !kinder.has('submit_validation'),
    mediaTtlS,
    concurrency,
    kinder,
    jsonBodyLimit: 50 * 1024 * 1024,
    inputHosts: new Set((opts.inputHosts ?? []).map((h) => h.toLowerCase())),
    uploadLimit: 100 * 1024 * 1024,
  };
}

/** Restores jobs and billing from the state file (re-sending the webhooks of completed jobs) and keeps it written. */
function attachStateFile(
  file: string,
  state: ReturnType<typeof readState>,
  engine: Engine,
  signer: ReturnType<typeof createSigner>,
  deliverWebhook: (job: JobRecord) => void,
  debounceMs: number,
  logger: EmulatorLogger,
): StateWriter {
  if (state) {
    engine.restore(state.jobs, state.billing, state.seq);
    for (const job of engine.list()) if (job.status === 'COMPLETED') deliverWebhook(job);
  }
  return createStateWriter(
    file,
    () => ({
      version: 1,
      saved_at: new Date().toISOString(),
      seq: engine.seq,
      webhook_private_key_pem: signer.privateKeyPem,
      jobs: engine.list(),
      billing: engine.billing(),
    }),
    debounceMs,
    (err) => logger.error({ err }, 'emulator could not write its state file'),
  );
}
