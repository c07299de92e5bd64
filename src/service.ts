import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createLogger, urlPassword } from './logging.js';
import { loraReuseMarginMs, type Config } from './config.js';
import { createApp } from './app.js';
import { createFalGateway, type FalGateway } from './fal/gateway.js';
import { createMedia } from './images/media.js';
import { createFileUrls, loadOrCreateFileUrlSecret } from './images/file-urls.js';
import { createImageService, type ImageService } from './images/generate.js';
import { createLoraResolver } from './images/loras.js';
import { createAnswerRecovery } from './images/recover-answer.js';
import { modelCatalog, type ModelRegistry } from './models/registry.js';
import { createServedModelRegistry } from './models/prices.js';
import { formatUsd, parseMarkup } from './metering/money.js';
import { createDatabase } from './db/index.js';
import { createLedger, type Ledger } from './metering/ledger.js';
import { createReports } from './metering/reports.js';
import { createKeysStore } from './metering/keys-store.js';
import { createIdempotencyStore } from './metering/idempotency-store.js';
import { createAuthenticator, loadOrCreateGeneratedKey } from './metering/auth.js';
import { startEmulator } from './emulator/index.js';
import { createMetrics, type Metrics } from './metrics.js';
import { Agent, fetch as undiciFetch } from 'undici';
import { createRedirectFetch, type FetchLike } from './fal/redirect-fetch.js';
import { createYoungGarbageFetch } from './fal/young-garbage-fetch.js';
import type { FalPhase } from './fal/errors.js';
import { createCompletionRelay } from './fal/completion-relay.js';
import { createCompletionHub, createWebhookVerifier, type WebhookVerifier } from './fal/webhooks.js';
import { FAL_WEBHOOK_PATH } from './http/routes/fal-webhook.js';
import { createReconciler, type Reconciler, type ReconcileReport } from './metering/reconcile.js';
import { createPendingCloses } from './metering/pending-closes.js';
import { join } from 'node:path';
import { createLeaseStore, holdLease } from './metering/lease-store.js';
import { createOutboxStore } from './metering/outbox-store.js';
import { createBillingWebhookWorker, type BillingWebhookWorker } from './metering/billing-webhook.js';
import { createKeyRateLimiter } from './http/rate-limit.js';
import { createHttpServer } from './http/http-server.js';
import { drainServer } from './http/shutdown.js';

/**
 * The composition root: builds every part from the configuration and wires
 * them through factories. `main.ts` adds only process concerns (signals,
 * banner); tests build a service the same way with overrides.
 */

import type { Service, ServiceOverrides } from './service-types.js';

export type { Service, ServiceOverrides } from './service-types.js';

export async function startService(config: Config, overrides: ServiceOverrides = {}): Promise<Service> {
  const logger =
    overrides.logger ??
    createLogger({
      level: config.logLevel,
      secrets: [config.falKey, ...config.apiKeys, config.adminApiKey, config.billingWebhookSecret, urlPassword(config.databaseUrl), urlPassword(config.redisUrl)],
      destination: overrides.logDestination,
    });
  const registry = overrides.registry ?? createServedModelRegistry({ catalog: modelCatalog, prices: config.modelPrices, log: logger });
  const markup = parseMarkup(config.priceMarkup);

  let emulator = overrides.emulator;
  let ownEmulator = false;
  if (!emulator && config.embeddedEmulator) {
    emulator = await startEmulator({ port: 0, latencyMs: config.emulatorLatencyMs, imageMode: config.emulatorImageMode });
    ownEmulator = true;
  }
  const falBaseUrl = emulator ? emulator.url : config.falBaseUrl;
  const falKey = config.falKey ?? (emulator ? 'emulator' : undefined);

  // A burst of requests queues for pool connections; waiting up to the acquire
  // timeout beats answering 503 after the 5 s connect timeout (measured: 648 of
  // 1,000 simultaneous requests failed that way with a pool of 10).
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
  const ledger = createLedger(database, { leaseId: lease.id, onSliceError: (err, what) => logger.warn({ err }, what) });
  const reports = createReports(database);
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
  const authenticate = createAuthenticator({
    keys,
    staticKeys: config.apiKeys,
    adminKey: config.adminApiKey,
    generatedKeyHash: generatedKey?.sha256,
  });

  const metrics = overrides.metrics ?? createMetrics();
  metrics.ledgerReads.unrecovered = async () => (await reports.unrecovered()).byModel.map((m) => ({ model: m.model, usd: formatUsd(m.micros) }));
  // Separate pools: status streams hold a connection each for a whole job;
  // everything else shares a bounded keep-alive pool, so thousands of
  // waiting jobs never mean thousands of sockets to fal.
  const shortPool = new Agent({ connections: config.falMaxConnections, keepAliveTimeout: 30_000 });
  const streamPool = new Agent({ connections: config.statusStreamsMax || 1, keepAliveTimeout: 30_000, bodyTimeout: 0 });
  const viaPool = (pool: Agent): FetchLike => (input, init) => undiciFetch(input as string, { ...(init as object), dispatcher: pool }) as unknown as Promise<Response>;
  // With Redis, replicas pass on callbacks that reached the wrong one (src/fal/completion-relay.ts).
  const relay =
    config.falWebhooks && config.redisUrl
      ? createCompletionRelay({ hub: createCompletionHub(), redisUrl: config.redisUrl, channel: `${config.redisKeyPrefix}:fal-completions`, logger })
      : undefined;
  const falWebhooks = config.falWebhooks ? { hub: relay ?? createCompletionHub(), verifier: undefined as unknown as WebhookVerifier } : undefined;
  const fal = createFalGateway({
    credentials: falKey,
    baseUrl: falBaseUrl,
    requestTimeoutMs: config.requestTimeoutMs,
    storeIo: config.falStoreIo,
    // Calls with small answers skip fetch's per-request garbage, which outlives
    // young collections (src/fal/young-garbage-fetch.ts): status polls repeat for as
    // long as a job waits, and every job submits once (and may cancel).
    fetchFor: (phase) => (BUFFERED_PHASES.has(phase) ? createYoungGarbageFetch(shortPool) : viaPool(phase === 'stream' ? streamPool : shortPool)),
    maxStatusStreams: config.statusStreamsMax,
    pollRps: config.statusPollRps,
    ...(falWebhooks ? { webhook: { url: `${config.publicBaseUrl}${FAL_WEBHOOK_PATH}`, hub: falWebhooks.hub, graceMs: config.falWebhookGraceMs } } : {}),
    observe: (phase, seconds) => {
      metrics.falCallDuration.observe({ phase }, seconds);
      if (phase === 'status' || phase === 'stream') metrics.upstreamStatusRequests.inc();
    },
  });
  if (falWebhooks) {
    // fal's JWKS is fetched like any fal traffic, so FAL_BASE_URL redirects it too (the emulator serves one).
    falWebhooks.verifier = createWebhookVerifier({ jwksUrl: config.falJwksUrl, fetchImpl: createRedirectFetch({ baseUrl: falBaseUrl, fetchImpl: viaPool(shortPool) }) });
  }
  const media = createMedia({
    falBaseUrl,
    // Without a proxied fal-protocol server no URL of ours is ever signed.
    fileUrls: createFileUrls({ secret: config.fileUrlSecret ?? (falBaseUrl ? await loadOrCreateFileUrlSecret(config.dataDir) : randomBytes(32)), ttlS: config.fileUrlTtlS }),
    allowedHosts: config.imageHostsAllowed,
    maxBytes: config.imageMaxBytes,
    timeoutMs: config.imageFetchTimeoutMs,
  });
  const loras = createLoraResolver({
    loraDir: config.loraDir,
    maxBytes: config.loraMaxBytes,
    dataDir: config.dataDir,
    fal,
    target: falBaseUrl ?? 'fal',
    logger,
    lifetimeS: config.loraUploadTtlS,
    reuseMarginMs: loraReuseMarginMs(config),
  });
  const shutdown = new AbortController();
  // The image service listens once and aborts its live requests itself; other
  // users (readiness checks, tests) may add listeners of their own: no warning cap.
  setMaxListeners(0, shutdown.signal);
  let shuttingDown = false;
  const pendingCloses = createPendingCloses(join(config.dataDir, 'pending-closes'));
  const images = createImageService({
    fal,
    ledger,
    lease,
    pendingCloses,
    media,
    markup,
    requestTimeoutMs: config.requestTimeoutMs,
    logger,
    shutdownSignal: shutdown.signal,
    billingEvents: billingWebhook,
    loras,
    metrics,
  });

  const leases = { store: leaseStore, ownLeaseId: lease.id, valid: lease.valid };
  const reconciler = createReconciler({ ledger, fal, registry, markup, logger, billingEvents: billingWebhook, giveUpAfterMs: config.jobGiveUpMs, leases, inFlight: images.inFlight, pendingCloses });
  let reconciling: Promise<ReconcileReport | undefined> | undefined;
  let leaseWatch: NodeJS.Timeout | undefined;
  const reconcile = (): Promise<ReconcileReport | undefined> => {
    // One round at a time; a slow fal must not pile rounds up.
    reconciling ??= reconciler
      .run({ olderThanMs: config.reconcileAfterMs })
      .then((report) => {
        if (report.examined > 0 || report.lostFound.length > 0 || report.lostAbsent.length > 0 || report.pendingClosed.length > 0 || report.jobsClosed.length > 0 || (report.slicesReturned ?? 0) > 0) logger.info({ reconcile: { ...report, examined: report.examined } }, 'reconciled open requests');
        watchLease(report.nextLeaseExpiryMs);
        return report;
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'reconciliation failed');
        return undefined;
      })
      .finally(() => {
        reconciling = undefined;
      });
    return reconciling;
  };
  // Another process's open requests are settled as soon as its lease expires,
  // should it be dead (a restart after a crash finds its old lease still live
  // for up to LEASE_EXPIRY_MS): a round then, unless the interval's comes first.
  const watchLease = (expiresAtMs: number | undefined): void => {
    if (expiresAtMs === undefined || shuttingDown || leaseWatch) return;
    const waitMs = Math.max(0, expiresAtMs - Date.now()) + LEASE_EXPIRY_MARGIN_MS;
    if (config.reconcileIntervalMs > 0 && waitMs >= config.reconcileIntervalMs) return;
    leaseWatch = setTimeout(() => {
      leaseWatch = undefined;
      if (!shuttingDown) void reconcile();
    }, waitMs);
    leaseWatch.unref();
  };

  const rateLimiter = createKeyRateLimiter({
    logger,
    redisUrl: config.redisUrl,
    keyPrefix: config.redisKeyPrefix,
    failClosed: config.rateLimitFailClosed,
    onFailOpen: () => metrics.rateLimitFailOpen.inc(),
    onFailClosed: () => metrics.refusals.inc({ reason: 'rate_limiter_unavailable' }),
    onRefused: () => metrics.refusals.inc({ reason: 'rate_limit' }),
    onStoreState: (up) => metrics.rateLimitStoreUp.set(up ? 1 : 0),
  });
  // Bounded by the client's connect timeout; a Redis that is down leaves
  // limits failing open (or closed), it never stops the service from starting.
  await rateLimiter.ready();
  await relay?.ready();

  const app = createApp({
    logger,
    registry,
    images,
    media,
    authenticate,
    keys,
    reports,
    maxBodyBytes: config.maxBodyBytes,
    publicBaseUrl: config.publicBaseUrl,
    metrics,
    markup,
    falWebhooks,
    maxInFlight: config.maxInFlight,
    corsOrigins: config.corsOrigins,
    logPrompts: config.logPrompts,
    idempotency: {
      store: createIdempotencyStore(database),
      ttlS: config.idempotencyTtlS,
      waitMs: config.requestTimeoutMs + 5_000,
      leaseId: lease.id,
      recovery: createAnswerRecovery({ ledger, leases: leaseStore, reconciler, fal, media, reconcileAfterMs: config.reconcileAfterMs, logger }),
    },
    isShuttingDown: () => shuttingDown,
    rateLimit: { limiter: rateLimiter, defaultRpm: config.defaultRpmLimit },
    streamKeepAliveMs: config.streamKeepAliveMs,
    strictParams: config.strictParams,
    readiness: [
      { name: 'upstream', check: () => fal.ping({ signal: AbortSignal.timeout(2000) }) },
      { name: 'storage', check: () => database.ping().then(() => true) },
      // Failing open the process still serves (degraded); failing closed it cannot serve image requests.
      ...(rateLimiter.store === 'redis' ? [{ name: 'rate_limiter', check: () => rateLimiter.check(), required: config.rateLimitFailClosed }] : []),
    ],
  });

  // The timeouts bound how long a client may take to send its request; the
  // answer (a job of minutes) is bounded by REQUEST_TIMEOUT_MS instead.
  const server = createHttpServer(app, logger, {
    limits: { headersTimeoutMs: config.headersTimeoutMs, bodyTimeoutMs: config.bodyTimeoutMs, maxConnections: config.maxConnections },
    onRefused: (reason) => metrics.refusals.inc({ reason }),
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Node's default accept backlog (511) overflowed under 1,000 simultaneous
    // connections (the kernel dropped them); the kernel caps this at somaxconn.
    server.listen({ port: config.port, host: config.host, backlog: 4096 }, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;

  billingWebhook?.start();
  const startupReconcile = reconcile();
  const timer = config.reconcileIntervalMs > 0 ? setInterval(() => void reconcile(), config.reconcileIntervalMs) : undefined;
  timer?.unref();

  let closing: Promise<void> | undefined;
  let endMinDrain = (): void => {};
  const minDrainCut = new Promise<void>((resolve) => (endMinDrain = resolve));
  return {
    app,
    server,
    url,
    logger,
    fal,
    ledger,
    reports,
    keys,
    database,
    registry,
    metrics,
    emulator,
    generatedKey,
    reconciler,
    images,
    rateLimiter,
    startupReconcile,
    close(opts = {}) {
      if (closing) {
        endMinDrain();
        return closing;
      }
      closing = (async () => {
        // Graceful: /readyz turns 503 and new requests are refused at once;
        // requests in flight get SHUTDOWN_GRACE_MS to finish (and be billed).
        // Past it, their fal waits are aborted (the jobs are cancelled, or
        // left to the next start's reconciliation) so they still get answered.
        shuttingDown = true;
        if (timer) clearInterval(timer);
        if (leaseWatch) clearTimeout(leaseWatch);
        const minDrainMs = opts.minDrainMs ?? 0;
        if (minDrainMs > 0) logger.info({ min_drain_ms: minDrainMs, grace_ms: config.shutdownGraceMs }, 'draining: /readyz and new requests answer 503 while the port stays open');
        await drainServer(server, {
          minDrainMs,
          minDrainCut,
          graceMs: config.shutdownGraceMs,
          abortDrainMs: ABORT_DRAIN_MS,
          onGraceOver: () => {
            logger.warn({ grace_ms: config.shutdownGraceMs }, 'shutdown grace period over; aborting requests still in flight');
            shutdown.abort();
          },
        });
        shutdown.abort();
        await reconciling;
        // Budget slices go back before the lease: a slice left behind waits for another process's round.
        await ledger.slices?.returnAll().catch((err: unknown) => logger.warn({ err }, 'budget slices: could not return them; reconciliation will'));
        // Every request this process took is answered: whatever it left open is anyone's to settle now.
        await lease.release().catch((err: unknown) => logger.warn({ err }, 'lease: could not release it; it expires on its own'));
        if (billingWebhook) {
          // Every settled request has its event committed by now; send what
          // is due so a clean restart does not delay billing, but never hold
          // shutdown hostage to a receiver that is down.
          await billingWebhook.flush(BILLING_FLUSH_MS);
          await billingWebhook.stop();
        }
        await rateLimiter.close();
        await relay?.close();
        await database.close();
        await Promise.all([shortPool.close(), streamPool.close()]).catch(() => {});
        if (ownEmulator) await emulator!.close();
      })();
      return closing;
    },
  };
}

/** fal calls answered with a small JSON body that is read whole (results and status streams are read as they arrive). */
const BUFFERED_PHASES: ReadonlySet<FalPhase> = new Set<FalPhase>(['submit', 'status', 'cancel']);

/** Once the port is closed: how long answers still being written (aborted requests' errors) get before sockets are cut. */
const ABORT_DRAIN_MS = 15_000;

/** After another process's lease expires: room for a renewal already on its way. */
const LEASE_EXPIRY_MARGIN_MS = 250;

/** How long shutdown spends delivering due billing events before leaving them for the next start. */
const BILLING_FLUSH_MS = 5_000;
