/** What `startService` (src/service.ts) returns, and what tests may put in place of its parts. */
import type { Express } from 'express';
import type { DestinationStream, Logger } from 'pino';
import type { Database } from './db/index.js';
import type { Emulator } from './emulator/index.js';
import type { FalGateway } from './fal/gateway.js';
import type { KeyRateLimiter } from './http/rate-limit.js';
import type { ImageService } from './images/generate.js';
import type { GeneratedKey } from './metering/auth.js';
import type { KeysStore } from './metering/keys-store.js';
import type { Ledger } from './metering/ledger.js';
import type { Reconciler, ReconcileReport } from './metering/reconcile.js';
import type { Reports } from './metering/reports.js';
import type { Metrics } from './metrics.js';
import type { ModelRegistry } from './models/registry.js';
import type { HttpServer } from './http/http-server.js';

export interface Service {
  app: Express;
  server: HttpServer;
  url: string;
  logger: Logger;
  fal: FalGateway;
  ledger: Ledger;
  /** Usage reports and exports over the ledger's rows. */
  reports: Reports;
  keys: KeysStore;
  database: Database;
  registry: ModelRegistry;
  metrics: Metrics;
  emulator: Emulator | undefined;
  generatedKey: GeneratedKey | undefined;
  reconciler: Reconciler;
  /** The use case; `inFlight` says which requests this process is working on. */
  images: ImageService;
  /** Per-key request limits; `stats` counts refusals and fail-opens. */
  rateLimiter: KeyRateLimiter;
  /** The reconciliation started with the service (it does not delay listening). */
  startupReconcile: Promise<ReconcileReport | undefined>;
  /**
   * Refuses new requests (and /readyz) with 503 at once, keeps listening for
   * at least `minDrainMs` (default 0), lets in-flight requests finish within
   * SHUTDOWN_GRACE_MS, then closes everything. A second call ends the minimum
   * drain early and returns the same promise.
   */
  close(opts?: { minDrainMs?: number }): Promise<void>;
}

export interface ServiceOverrides {
  logger?: Logger;
  /** Where the service's own logger writes (tests capture lines); ignored when `logger` is given. */
  logDestination?: DestinationStream;
  /** Reuse an emulator the caller started (tests) instead of the embedded one. */
  emulator?: Emulator;
  registry?: ModelRegistry;
  metrics?: Metrics;
}
