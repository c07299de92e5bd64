/**
 * The process of paths (h) and (l) (bench/paths/bare-hop.ts): the bare hop
 * of bench/paths/bare-hop-server.ts in front of the service's fal gateway,
 * configured from the service's own environment variables so its pools and
 * (for l) its ledger are the service's. Prints its URL; exits on SIGTERM.
 */
import pino from 'pino';
import { loadConfig } from '../../src/config.js';
import { createDatabase } from '../../src/db/index.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import { sha256Hex, staticKeyId } from '../../src/metering/auth.js';
import { createLeaseStore, holdLease } from '../../src/metering/lease-store.js';
import { createLedger } from '../../src/metering/ledger.js';
import { parseMarkup } from '../../src/metering/money.js';
import { maxCharge } from '../../src/metering/pricing.js';
import { createServedModelRegistry } from '../../src/models/prices.js';
import { modelCatalog } from '../../src/models/registry.js';
import { optimizeForSize } from '../../src/optimize-for-size.js';
import { startBareHop, type HopLedger } from './bare-hop-server.js';
import { serviceFalGateway } from './fal-direct.js';
import { createKeysStore } from '../../src/metering/keys-store.js';

const config = loadConfig(process.env);
// The service's V8 memory mode, as src/main.ts decides it.
// As the service at the bench's load: `auto` sets the mode only from HEAP_OPTIMIZE_FOR_SIZE_FROM waiting requests.
if (config.heapOptimizeForSize === true) optimizeForSize();
const logger = pino({ level: 'warn' });
const registry = createServedModelRegistry({ catalog: modelCatalog, prices: config.modelPrices, log: logger });
const canonical = normalizeRequest(registry, JSON.parse(process.env.HOP_BODY ?? '{}') as Record<string, unknown>);
const endpoint = canonical.model.endpoint;
// The service adds sync_mode itself (true only for b64_json); the bench checks the emulator saw the same input.
const input = { ...canonical.falInput, sync_mode: canonical.responseFormat === 'b64_json' };
const pooled = serviceFalGateway(config);

let ledger: HopLedger | undefined;
let closeLedger = async (): Promise<void> => {};
if (process.env.HOP_METERED === '1') {
  const database = await createDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, logger, sqliteSynchronous: config.sqliteSynchronous, poolSize: config.databasePoolSize, connectTimeoutMs: config.databaseAcquireTimeoutMs });
  const lease = await holdLease(createLeaseStore(database), { logger, renewMs: config.leaseRenewMs, expiryMs: config.leaseExpiryMs });
  const markup = parseMarkup(config.priceMarkup);
  // The key's row, as the service's authenticator makes it on a static key's first use.
  const keyHash = sha256Hex(config.apiKeys[0]!);
  await createKeysStore(database).ensureStatic({ id: staticKeyId(keyHash), keyHash });
  ledger = {
    ledger: createLedger(database, { leaseId: lease.id }),
    keyId: staticKeyId(keyHash),
    model: canonical.model,
    maxChargeMicros: maxCharge(canonical, markup),
    pricing: { promptExpansion: canonical.promptExpansion, markup },
  };
  closeLedger = async () => {
    await lease.release();
    await database.close();
  };
}

const hop = await startBareHop({ fal: pooled.fal, endpoint, input, ...(ledger ? { ledger } : {}) });
console.log(`bare hop listening on ${hop.url}`);
process.once('SIGTERM', () => {
  void (async () => {
    await hop.close();
    await pooled.close();
    await closeLedger();
    process.exit(0);
  })();
});
