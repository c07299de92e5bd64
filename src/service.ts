import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { createLogger, urlPassword } from './logging.js';
import { loraReuseMarginMs, type Config } from './config.js';
import { createApp } from './app.js';
import { createPooledFalGateway } from './fal/pooled-gateway.js';
import type { FalGateway } from './fal/types.js';
import { createMedia, type Media } from './images/media.js';
import { createFileUrls, loadOrCreateFileUrlSecret } from './images/file-urls.js';
import { createImageService, type ImageService } from './images/generate.js';
import { createLoraResolver } from './images/loras.js';
import { createInputUrlPolicy } from './images/input-urls.js';
import { createAnswerRecovery } from './images/recover-answer.js';
import { modelCatalog, type ModelRegistry } from './models/registry.js';
import { createServedModelRegistry } from './models/prices.js';
import { formatUsd, parseMarkup, type Markup } from './metering/money.js';
import { createDatabase } from './db/index.js';
import { createLedger } from './metering/ledger.js';
import { SUBMIT_TIMEOUT_MS } from './metering/lost-submits.js';
import { requestLedger } from './metering/request-ledger.js';
import { createReports } from './metering/reports.js';
import { createKeysStore } from './metering/keys-store.js';
import { createIdempotencyStore } from './metering/idempotency-store.js';
import { createAuthenticator, loadOrCreateGeneratedKey } from './metering/auth.js';
import { startEmulator, type Emulator } from './emulator/index.js';
import { createMetrics, type Metrics } from './metrics.js';
import { createRedirectFetch } from './fal/redirect-fetch.js';
import { createCompletionRelay, type CompletionRelay } from './fal/completion-relay.js';
import { createCompletionHub, createWebhookVerifier, type CompletionHub, type WebhookVerifier } from './fal/webhooks.js';
import { FAL_WEBHOOK_PATH } from './http/routes/fal-webhook.js';
import { createReconciler, type Reconciler } from './metering/reconcile.js';
import { createReconcileSchedule, type ReconcileSchedule } from './metering/reconcile-schedule.js';
import { createPendingCloses, type PendingCloses } from './metering/pending-closes.js';
import { createSettlement, InFlight } from './images/closing.js';
import { createLeaseStore, holdLease } from './metering/lease-store.js';
import { createOutboxStore } from './metering/outbox-store.js';
import { createBillingWebhookWorker, type BillingWebhookWorker } from './metering/billing-webhook.js';
import { createKeyRateLimiter, type KeyRateLimiter } from './http/rate-limit.js';
import { createHttpServer, type HttpServer } from './http/http-server.js';
import { drainServer } from './http/shutdown.js';
import type { Service, ServiceOverrides } from './service-types.js';

export type { Service, ServiceOverrides } from './service-types.js';

/**
 * The composition root: builds every part from the configuration and wires
 * them through factories. `main.ts` adds only process concerns (signals,
 * banner); tests build a service the same way with overrides. Each step
 * below builds one room's parts from the configuration and the parts built
 * before it; `startService` reads as their order.
 */
export async function startService(config: Config, overrides: ServiceOverrides = {}): Promise<Service> {
  const logger = overrides.logger ?? createServiceLogger(config, overrides);
  const registry = overrides.registry ?? createServedModelRegistry({ catalog: modelCatalog, prices: config.modelPrices, log: logger });
  const markup = parseMarkup(config.priceMarkup);
  const upstream = await startUpstream(config, overrides.emulator);
  const storage = await openStorage(config, logger);
  const metrics = overrides.metrics ?? createMetrics();
  metrics.ledgerReads.unrecovered = async () => (await storage.reports.unrecovered()).byModel.map((m) => ({ model: m.model, usd: formatUsd(m.micros) }));
  const falParts = createFal(config, upstream, metrics, logger);
  const lifecycle = { shuttingDown: false, shutdown: new AbortController() };
  // The image service listens once and aborts its live requests itself; other
  // users (readiness checks, tests) may add listeners of their own: no warning cap.
  setMaxListeners(0, lifecycle.shutdown.signal);
  const media = await createServiceMedia(config, upstream.falBaseUrl);
  const pendingCloses = createPendingCloses(join(config.dataDir, 'pending-closes'));
  const images = createImages(config, { ...storage, ...falParts, falBaseUrl: upstream.falBaseUrl, media, markup, logger, metrics, pendingCloses, shutdownSignal: lifecycle.shutdown.signal });
  const reconciler = createReconciler({
    ledger: storage.ledger,
    fal: falParts.fal,
    registry,
    markup,
    logger,
    billingEvents: storage.billingWebhook,
    pendingCloses,
    giveUpAfterMs: config.jobGiveUpMs,
    leases: { store: storage.leaseStore, ownLeaseId: storage.lease.id, valid: storage.lease.valid },
    inFlight: images.inFlight,
  });
  const schedule = createReconcileSchedule({ reconciler, logger, olderThanMs: config.reconcileAfterMs, intervalMs: config.reconcileIntervalMs });
  const rateLimiter = createRateLimiter(config, logger, metrics);
  // Bounded by the client's connect timeout; a Redis that is down leaves
  // limits failing open (or closed), it never stops the service from starting.
  await rateLimiter.ready();
  await falParts.relay?.ready();
  const app = createServiceApp(config, { ...storage, ...falParts, logger, registry, images, media, metrics, markup, reconciler, rateLimiter, lifecycle });
  const { server, url } = await listen(app, config, logger, metrics);
  storage.billingWebhook?.start();
  const startupReconcile = schedule.start();
  const close = closeService(config, { ...storage, ...upstream, ...falParts, logger, server, rateLimiter, schedule, lifecycle });
  const { database, ledger, reports, keys, generatedKey } = storage;
  return { app, server, url, logger, fal: falParts.fal, ledger, reports, keys, database, registry, metrics, emulator: upstream.emulator, generatedKey, reconciler, images, rateLimiter, startupReconcile, close };
}

type Storage = Awaited<ReturnType<typeof openStorage>>;
type Upstream = Awaited<ReturnType<typeof startUpstream>>;
type FalParts = ReturnType<typeof createFal>;
/** What shutdown changes: read by the app (503s) and by the image service (aborted waits). */
interface Lifecycle {
  shuttingDown: boolean;
  shutdown: AbortController;
}

function createServiceLogger(config: Config, overrides: ServiceOverrides): Logger {
  return createLogger({
    level: config.logLevel,
    secrets: [config.falKey, ...config.apiKeys, config.adminApiKey, config.billingWebhookSecret, urlPassword(config.databaseUrl), urlPassword(config.redisUrl)],
    destination: overrides.logDestination,
  });
}

/** The fal-protocol server to talk to: the caller's emulator, the embedded one, FAL_BASE_URL, or real fal. */
async function startUpstream(config: Config, given: Emulator | undefined) {
  const ownEmulator = !given && config.embeddedEmulator;
  const emulator = ownEmulator ? await startEmulator({ port: 0, latencyMs: config.emulatorLatencyMs, imageMode: config.emulatorImageMode }) : given;
  return {
    emulator,
    falBaseUrl: emulator ? emulator.url : config.falBaseUrl,
    falKey: config.falKey ?? (emulator ? 'emulator' : undefined),
    closeEmulator: async (): Promise<void> => {
      if (ownEmulator) await emulator!.close();
    },
  };
}

/** The database and every store over it, this process's lease, and the billing webhook's outbox worker. */
async function openStorage(config: Config, logger: Logger) {
  // A burst of requests queues for pool connections: waiting up to the
  // acquire timeout beats answering 503 once the connect timeout passes.
  const database = await createDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    logger,
    sqliteSynchronous: config.sqliteSynchronous,
    poolSize: config.databasePoolSize,
    connectTimeoutMs: config.databaseAcquireTimeoutMs,
  });
  // Taken before the first request is reserved: every request names it (src/metering/leases.ts).
  const leaseStore = createLeaseStore(database);
  const lease = await holdLease(leaseStore, { logger, renewMs: config.leaseRenewMs, expiryMs: config.leaseExpiryMs });
  const keys = createKeysStore(database);
  const billingWebhook: BillingWebhookWorker | undefined = config.billingWebhookUrl
    ? createBillingWebhookWorker({
        outbox: createOutboxStore(database),
        url: config.billingWebhookUrl,
        secret: config.billingWebhookSecret ?? '',
        logger,
        backoff: { maxMs: config.billingWebhookMaxBackoffMs },
      })
    : undefined;
  const generatedKey = config.apiKeys.length === 0 && !config.adminApiKey ? await loadOrCreateGeneratedKey(config.dataDir) : undefined;
  const authenticate = createAuthenticator({ keys, staticKeys: config.apiKeys, adminKey: config.adminApiKey, generatedKeyHash: generatedKey?.sha256 });
  const ledger = createLedger(database, { leaseId: lease.id, onSliceError: (err, what) => logger.warn({ err }, what) });
  return { database, leaseStore, lease, ledger, reports: createReports(database), keys, billingWebhook, generatedKey, authenticate };
}

/** The fal gateway over two connection pools (src/fal/pooled-gateway.ts), and fal's webhooks when FAL_WEBHOOKS is on. */
function createFal(config: Config, upstream: Upstream, metrics: Metrics, logger: Logger) {
  // With Redis, replicas pass on callbacks that reached the wrong one (src/fal/completion-relay.ts).
  const relay: CompletionRelay | undefined =
    config.falWebhooks && config.redisUrl
      ? createCompletionRelay({ hub: createCompletionHub(), redisUrl: config.redisUrl, channel: `${config.redisKeyPrefix}:fal-completions`, logger })
      : undefined;
  const hub: CompletionHub | undefined = config.falWebhooks ? (relay ?? createCompletionHub()) : undefined;
  const pooled = createPooledFalGateway({
    credentials: upstream.falKey,
    baseUrl: upstream.falBaseUrl,
    requestTimeoutMs: config.requestTimeoutMs,
    storeIo: config.falStoreIo,
    maxConnections: config.falMaxConnections,
    statusStreamsMax: config.statusStreamsMax,
    pollRps: config.statusPollRps,
    ...(hub ? { webhook: { url: `${config.publicBaseUrl}${FAL_WEBHOOK_PATH}`, hub, graceMs: config.falWebhookGraceMs } } : {}),
    observe: (phase, seconds) => {
      metrics.falCallDuration.observe({ phase }, seconds);
      if (phase === 'status' || phase === 'stream') metrics.upstreamStatusRequests.inc();
    },
  });
  const falWebhooks: { hub: CompletionHub; verifier: WebhookVerifier } | undefined = hub
    ? {
        hub,
        // fal's JWKS is fetched like any fal traffic, so FAL_BASE_URL redirects it too (the emulator serves one).
        verifier: createWebhookVerifier({ jwksUrl: config.falJwksUrl, fetchImpl: createRedirectFetch({ baseUrl: upstream.falBaseUrl, fetchImpl: pooled.shortFetch }) }),
      }
    : undefined;
  return { fal: pooled.fal, relay, falWebhooks, closePools: pooled.close };
}

/** Image bytes in and out: downloads from fal and the image URLs this origin signs. */
async function createServiceMedia(config: Config, falBaseUrl: string | undefined): Promise<Media> {
  // Without a proxied fal-protocol server no URL of ours is ever signed.
  const secret = config.fileUrlSecret ?? (falBaseUrl ? await loadOrCreateFileUrlSecret(config.dataDir) : randomBytes(32));
  return createMedia({
    falBaseUrl,
    fileUrls: createFileUrls({ secret, ttlS: config.fileUrlTtlS }),
    allowedHosts: config.imageHostsAllowed,
    maxBytes: config.imageMaxBytes,
    timeoutMs: config.imageFetchTimeoutMs,
  });
}

type ImageParts = Pick<Storage, 'ledger' | 'lease' | 'billingWebhook'> &
  Pick<FalParts, 'fal'> &
  Pick<Upstream, 'falBaseUrl'> &
  Pick<Parameters<typeof createImageService>[0], 'media' | 'markup' | 'logger' | 'metrics' | 'shutdownSignal'> & { pendingCloses: PendingCloses };

/** The use case, with the LoRA files it may upload to fal and the closing of its requests' rows. */
function createImages(config: Config, p: ImageParts): ImageService {
  const loras = createLoraResolver({
    loraDir: config.loraDir,
    maxBytes: config.loraMaxBytes,
    dataDir: config.dataDir,
    fal: p.fal,
    target: p.falBaseUrl ?? 'fal',
    logger: p.logger,
    lifetimeS: config.loraUploadTtlS,
    reuseMarginMs: loraReuseMarginMs(config),
  });
  const { fal, ledger, lease, pendingCloses, media, markup, logger, shutdownSignal, metrics } = p;
  const inFlight = new InFlight();
  const settlement = createSettlement({ ledger, inFlight, leaseId: lease.id, pendingCloses, billingEvents: p.billingWebhook });
  // One submit bound for the job runner and the lost-submit search that relies on it.
  return createImageService({ fal, ledger: requestLedger(ledger), settlement, inFlight, lease, media, markup, requestTimeoutMs: config.requestTimeoutMs, submitTimeoutMs: SUBMIT_TIMEOUT_MS, logger, shutdownSignal, loras, metrics });
}

function createRateLimiter(config: Config, logger: Logger, metrics: Metrics): KeyRateLimiter {
  return createKeyRateLimiter({
    logger,
    redisUrl: config.redisUrl,
    keyPrefix: config.redisKeyPrefix,
    failClosed: config.rateLimitFailClosed,
    onFailOpen: () => metrics.rateLimitFailOpen.inc(),
    onFailClosed: () => metrics.refusals.inc({ reason: 'rate_limiter_unavailable' }),
    onRefused: () => metrics.refusals.inc({ reason: 'rate_limit' }),
    onStoreState: (up) => metrics.rateLimitStoreUp.set(up ? 1 : 0),
  });
}

interface AppParts extends Storage, Pick<FalParts, 'fal' | 'falWebhooks'> {
  logger: Logger;
  registry: ModelRegistry;
  images: ImageService;
  media: Media;
  metrics: Metrics;
  markup: Markup;
  reconciler: Reconciler;
  rateLimiter: KeyRateLimiter;
  lifecycle: Lifecycle;
}

function createServiceApp(config: Config, p: AppParts): Express {
  const { logger, registry, images, media, authenticate, keys, reports, metrics, markup, falWebhooks, ledger, fal, rateLimiter, database } = p;
  return createApp({
    logger,
    registry,
    images,
    media,
    authenticate,
    keys,
    reports,
    metrics,
    markup,
    falWebhooks,
    maxBodyBytes: config.maxBodyBytes,
    publicBaseUrl: config.publicBaseUrl,
    maxInFlight: config.maxInFlight,
    corsOrigins: config.corsOrigins,
    logPrompts: config.logPrompts,
    idempotency: {
      store: createIdempotencyStore(database),
      ttlS: config.idempotencyTtlS,
      waitMs: config.requestTimeoutMs + 5_000,
      leaseId: p.lease.id,
      recovery: createAnswerRecovery({ ledger, leases: p.leaseStore, reconciler: p.reconciler, fal, media, reconcileAfterMs: config.reconcileAfterMs, logger }),
      logger,
    },
    isShuttingDown: () => p.lifecycle.shuttingDown,
    rateLimit: { limiter: rateLimiter, defaultRpm: config.defaultRpmLimit },
    streamKeepAliveMs: config.streamKeepAliveMs,
    strictParams: config.strictParams,
    edits: editsDeps(config, registry, fal),
    readiness: [
      { name: 'upstream', check: () => fal.ping({ signal: AbortSignal.timeout(2000) }) },
      { name: 'storage', check: () => database.ping().then(() => true) },
      // Failing open the process still serves (degraded); failing closed it cannot serve image requests.
      ...(rateLimiter.store === 'redis' ? [{ name: 'rate_limiter', check: () => rateLimiter.check(), required: config.rateLimitFailClosed }] : []),
    ],
  });
}

async function listen(app: Express, config: Config, logger: Logger, metrics: Metrics): Promise<{ server: HttpServer; url: string }> {
  // The timeouts bound how long a client may take to send its request; the
  // answer (a job of minutes) is bounded by REQUEST_TIMEOUT_MS instead.
  const server = createHttpServer(app, logger, {
    limits: { headersTimeoutMs: config.headersTimeoutMs, bodyTimeoutMs: config.bodyTimeoutMs, keepAliveTimeoutMs: config.keepAliveTimeoutMs, maxConnections: config.maxConnections },
    onRefused: (reason) => metrics.refusals.inc({ reason }),
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Node's default accept backlog (511) drops connections under a burst of
    // simultaneous clients; the kernel caps this at somaxconn.
    server.listen({ port: config.port, host: config.host, backlog: 4096 }, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return { server, url: `http://${host}:${addr.port}` };
}

interface CloseParts extends Storage, Pick<Upstream, 'closeEmulator'>, Pick<FalParts, 'relay' | 'closePools'> {
  logger: Logger;
  server: HttpServer;
  rateLimiter: KeyRateLimiter;
  schedule: ReconcileSchedule;
  lifecycle: Lifecycle;
}

/** `Service.close`: the first call drains and closes; a later one ends the minimum drain early and returns the same promise. */
function closeService(config: Config, p: CloseParts): Service['close'] {
  let closing: Promise<void> | undefined;
  let endMinDrain = (): void => {};
  const minDrainCut = new Promise<void>((resolve) => (endMinDrain = resolve));
  return (opts = {}) => {
    if (closing) {
      endMinDrain();
      return closing;
    }
    closing = (async () => {
      // Graceful: /readyz turns 503 and new requests are refused at once;
      // requests in flight get SHUTDOWN_GRACE_MS to finish (and be billed).
      // Past it, their fal waits are aborted (the jobs are cancelled, or
      // left to the next start's reconciliation) so they still get answered.
      p.lifecycle.shuttingDown = true;
      const lastRound = p.schedule.stop();
      const minDrainMs = opts.minDrainMs ?? 0;
      if (minDrainMs > 0) p.logger.info({ min_drain_ms: minDrainMs, grace_ms: config.shutdownGraceMs }, 'draining: /readyz and new requests answer 503 while the port stays open');
      await drainServer(p.server, {
        minDrainMs,
        minDrainCut,
        graceMs: config.shutdownGraceMs,
        abortDrainMs: ABORT_DRAIN_MS,
        onGraceOver: () => {
          p.logger.warn({ grace_ms: config.shutdownGraceMs }, 'shutdown grace period over; aborting requests still in flight');
          p.lifecycle.shutdown.abort();
        },
      });
      p.lifecycle.shutdown.abort();
      await lastRound;
      // Budget slices go back before the lease: a slice left behind waits for another process's round.
      await p.ledger.slices?.returnAll().catch((err: unknown) => p.logger.warn({ err }, 'budget slices: could not return them; reconciliation will'));
      // Every request this process took is answered: whatever it left open is anyone's to settle now.
      await p.lease.release().catch((err: unknown) => p.logger.warn({ err }, 'lease: could not release it; it expires on its own'));
      if (p.billingWebhook) {
        // Every settled request has its event committed by now; send what
        // is due so a clean restart does not delay billing, but never hold
        // shutdown hostage to a receiver that is down.
        await p.billingWebhook.flush(BILLING_FLUSH_MS);
        await p.billingWebhook.stop();
      }
      await p.rateLimiter.close();
      await p.relay?.close();
      await p.database.close();
      await p.closePools();
      await p.closeEmulator();
    })();
    return closing;
  };
}

/** Once the port is closed: how long answers still being written (aborted requests' errors) get before sockets are cut. */
const ABORT_DRAIN_MS = 15_000;

/** How long shutdown spends delivering due billing events before leaving them for the next start. */
const BILLING_FLUSH_MS = 5_000;

/** Image edits: input URLs checked against EDIT_IMAGE_HOSTS_ALLOWED, files capped by EDIT_IMAGE_MAX_BYTES and uploaded to fal. */
function editsDeps(config: Config, registry: ModelRegistry, fal: FalGateway) {
  return { inputs: { registry, fal, urls: createInputUrlPolicy({ allowed: config.editImageHostsAllowed }), tmpDir: tmpdir() }, maxFileBytes: config.editImageMaxBytes };
}
