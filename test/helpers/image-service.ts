import { createSettlement, InFlight } from '../../src/images/closing.js';
import { createImageService, type ImageService, type ImageServiceDeps } from '../../src/images/generate.js';
import type { Ledger } from '../../src/metering/ledger.js';
import type { PendingCloses } from '../../src/metering/pending-closes.js';

/**
 * The use case alone, wired as src/service.ts wires it: its `Settlement`
 * (src/images/closing.ts) over the same ledger, sharing its in-flight set.
 */
export function imageServiceOver(deps: Omit<ImageServiceDeps, 'settlement' | 'inFlight'> & { ledger: Ledger; pendingCloses?: PendingCloses }): ImageService {
  const { pendingCloses, ...rest } = deps;
  const inFlight = new InFlight();
  const settlement = createSettlement({ ledger: deps.ledger, inFlight, leaseId: deps.lease?.id, pendingCloses });
  return createImageService({ ...rest, settlement, inFlight });
}
