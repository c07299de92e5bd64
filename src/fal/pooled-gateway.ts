import { Agent, fetch as undiciFetch } from 'undici';
import type { FalPhase } from './errors.js';
import { createFalGateway, type FalGateway, type FalGatewayOptions } from './gateway.js';
import type { FetchLike } from './redirect-fetch.js';
import { createYoungGarbageFetch } from './young-garbage-fetch.js';

/**
 * The fal gateway over the service's two connection pools. Status streams
 * hold a connection each for a whole job, so they get a pool of their own;
 * everything else shares a bounded keep-alive pool, so thousands of waiting
 * jobs never mean thousands of sockets to fal. One function, so a benchmark's
 * direct path to fal runs exactly the gateway the service runs.
 */
export interface PooledFalGateway {
  fal: FalGateway;
  /** A fetch through the shared pool, for other fal traffic (the webhook JWKS). */
  shortFetch: FetchLike;
  close(): Promise<void>;
}

export function createPooledFalGateway(
  opts: Omit<FalGatewayOptions, 'fetchImpl' | 'fetchFor'> & { maxConnections: number; statusStreamsMax: number },
): PooledFalGateway {
  const { maxConnections, statusStreamsMax, ...gateway } = opts;
  const shortPool = new Agent({ connections: maxConnections, keepAliveTimeout: 30_000 });
  const streamPool = new Agent({ connections: statusStreamsMax || 1, keepAliveTimeout: 30_000, bodyTimeout: 0 });
  const viaPool = (pool: Agent): FetchLike => (input, init) => undiciFetch(input as string, { ...(init as object), dispatcher: pool }) as unknown as Promise<Response>;
  const fal = createFalGateway({
    ...gateway,
    maxStatusStreams: statusStreamsMax,
    // Calls with small answers skip fetch's per-request garbage, which outlives
    // young collections (src/fal/young-garbage-fetch.ts): status polls repeat for as
    // long as a job waits, and every job submits once (and may cancel).
    fetchFor: (phase) => (BUFFERED_PHASES.has(phase) ? createYoungGarbageFetch(shortPool) : viaPool(phase === 'stream' ? streamPool : shortPool)),
  });
  return {
    fal,
    shortFetch: viaPool(shortPool),
    async close() {
      await Promise.all([shortPool.close(), streamPool.close()]).catch(() => {});
    },
  };
}

/** fal calls answered with a small JSON body that is read whole (results and status streams are read as they arrive). */
const BUFFERED_PHASES: ReadonlySet<FalPhase> = new Set<FalPhase>(['submit', 'status', 'cancel']);
