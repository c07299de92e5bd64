import { createSettlement, InFlight } from '../../src/images/closing.js';
import { createImageService, type ImageService, type ImageServiceDeps } from '../../src/images/generate.js';
import type { Ledger } from '../../src/metering/ledger.js';
import { SUBMIT_TIMEOUT_MS } from '../../src/metering/lost-submits.js';
import { requestLedger } from '../../src/metering/request-ledger.js';
import type { PendingCloses } from '../../src/metering/pending-closes.js';

/**
 * The use case alone, wired as src/service.ts wires it: its `RequestLedger`
 * (src/metering/request-ledger.ts) and `Settlement` (src/images/closing.ts)
 * over the same ledger, sharing its in-flight set, and the submit bound.
 */
export function imageServiceOver(deps: Omit<ImageServiceDeps, 'settlement' | 'inFlight' | 'ledger' | 'submitTimeoutMs'> & { ledger: Ledger; pendingCloses?: PendingCloses }): ImageService {
  const { pendingCloses, ledger, ...rest } = deps;
  const inFlight = new InFlight();
  const settlement = createSettlement({ ledger, inFlight, leaseId: deps.lease?.id, pendingCloses });
  return createImageService({ ...rest, ledger: requestLedger(ledger), submitTimeoutMs: SUBMIT_TIMEOUT_MS, settlement, inFlight });
}
