/**
 * The fal emulator: a real HTTP server speaking fal's queue protocol (as
 * @fal-ai/client 1.10.1 uses it), with real images, its own price table and
 * billing log, armed faults, signed webhooks and storage uploads.
 * See docs/EMULATOR.md.
 */
export { startEmulator, type Emulator, type EmulatorOptions } from './emulator.js';
export type { EmulatorLogger } from './context.js';
export { KINDER, type Kinder } from './behaviours.js';
export { ENDPOINTS, type EndpointSpec } from './endpoints.js';
export type { ArmedFault, FaultKind, FaultPhase, FaultSpec } from './faults.js';
export type { ImageFormat, ImageMode } from './images.js';
export type { BillingEntry, JobOutcome, JobRecord, JobStatus } from './jobs.js';
export { DEFAULT_PRICES_FILE, loadPriceTable, type PriceEntry, type PriceTable } from './pricing.js';
export type { DeliveryAttempt, Jwk, WebhookRetryOptions } from './webhooks.js';
