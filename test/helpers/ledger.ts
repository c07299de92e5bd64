import { randomUUID } from 'node:crypto';
import type { Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';

/** Shared by the ledger's and the reports' suites. */

/** Money beyond what a float holds exactly. */
export const BEYOND_2_53 = 2n ** 53n + 1n;

export function uid(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

/** A clock the test moves by hand. */
export function manualClock(start: string): { clock: () => Date; set(iso: string): void } {
  let now = new Date(start);
  return { clock: () => new Date(now), set: (iso) => (now = new Date(iso)) };
}

export async function keyWithBudget(database: Database, budgetMicros: bigint | null): Promise<string> {
  const { record } = await createKeysStore(database).create({ name: 'test', budgetMicros });
  return record.id;
}

export function reserveInput(keyId: string, maxChargeMicros: bigint, requestId = uid('req')) {
  return { requestId, keyId, model: 'alibaba/z-image-turbo', endpoint: 'fal-ai/z-image/turbo', user: 'u-1', maxChargeMicros };
}
