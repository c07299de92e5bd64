/**
 * What the route modules share. Built once per emulator by `emulator.ts`;
 * there are no module-level singletons, so several emulators can run in one
 * process (tests do).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { EndpointSpec } from './endpoints.js';
import type { ArmedFault, FaultBook, FaultKind, FaultPhase, MatchContext } from './faults.js';
import type { ImageCache } from './images.js';
import type { Engine, JobEvent, JobRecord } from './jobs.js';
import type { PriceTable } from './pricing.js';
import type { FileStore } from './storage.js';
import type { WebhookSender, WebhookSigner } from './webhooks.js';

/** pino-compatible (obj, msg) or console-like. */
export interface EmulatorLogger {
  debug?(obj: unknown, msg?: string): void;
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export type JobListener = (job: JobRecord, event: JobEvent) => void;

export interface Ctx {
  readonly engine: Engine;
  readonly faults: FaultBook;
  readonly endpoints: ReadonlyMap<string, EndpointSpec>;
  readonly files: FileStore;
  readonly images: ImageCache;
  readonly signer: WebhookSigner;
  readonly webhooks: WebhookSender;
  readonly logger: EmulatorLogger;
  readonly started: number;
  readonly options: {
    readonly latencyMs: number;
    readonly imageMode: 'entropy' | 'cheap';
    readonly emulatorKey: string | undefined;
    readonly maxRenderPixels: number;
    readonly streamHeartbeatMs: number;
    readonly jsonBodyLimit: number;
    readonly uploadLimit: number;
    /** Queue input is validated by the runner, after queueing (fal's way); false: a 422 on submit. */
    readonly lateValidation: boolean;
    /** Seconds output media is served; null = forever. */
    readonly mediaTtlS: number | null;
    readonly concurrency: number;
    readonly kinder: ReadonlySet<string>;
    /** Hosts (host or host:port) edit inputs may be fetched from besides the emulator's own CDN. */
    readonly inputHosts: ReadonlySet<string>;
  };
  /** True when `url` names a file on this emulator's CDN that is not (or no longer) there. */
  mediaMissing(url: string): boolean;
  /** The bytes of a file (or emulated image) on this emulator's CDN; undefined when gone, 'foreign' when the URL is not on its CDN. */
  mediaBytes(url: string): Promise<Buffer | undefined | 'foreign'>;
  /** Base for URLs the emulator hands out (images, uploads). */
  publicUrl(): string;
  prices(): PriceTable;
  setPrices(table: PriceTable, merge: boolean): void;
  resetPrices(): void;
  /** HTTP calls seen per phase. */
  readonly calls: Record<FaultPhase | 'files' | 'platform' | 'admin', number>;
  listen(jobId: string, fn: JobListener): () => void;
  /** Takes a call fault for this phase: from the `x-emulator-fault` header first, then the armed book. */
  takeFault(req: IncomingMessage, phase: FaultPhase, kinds: readonly FaultKind[], ctx: MatchContext): ArmedFault | undefined;
  sleep(ms: number): Promise<void>;
  reset(): void;
  persist(): void;
}

export type Handler = (ctx: Ctx, req: IncomingMessage, res: ServerResponse, route: Route) => Promise<void> | void;

export interface Route {
  /** Path segments after the host, URL-decoded. */
  segments: string[];
  query: URLSearchParams;
}
