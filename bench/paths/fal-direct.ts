import type { Config } from '../../src/config.js';
import type { FalGateway } from '../../src/fal/gateway.js';
import { createPooledFalGateway, type PooledFalGateway } from '../../src/fal/pooled-gateway.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import { createModelRegistry, defaultModels } from '../../src/models/registry.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';

/**
 * Path (a): the fal job our service would run for `body`, run straight
 * against the upstream through a fal gateway built as the service builds its
 * own (`serviceFalGateway`: the real `@fal-ai/client` behind our transport,
 * the same connection pools, stream limits and retry rules), with the same
 * submit → wait for completion → result sequence the service uses. What is
 * left between (a) and (b) is then our HTTP layer, validation, metering and
 * response building, and the service's process.
 */
export function falDirectPath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  fal: FalGateway;
  /** An OpenAI-images request body, turned into fal input the way the service does. */
  body: Record<string, unknown>;
}): BenchPath & { input: Record<string, unknown>; endpoint: string; fal: FalGateway } {
  const canonical = normalizeRequest(createModelRegistry(defaultModels), opts.body);
  const endpoint = canonical.model.endpoint;
  // The service adds sync_mode itself (true only for b64_json); the
  // benchmark checks at start-up that both paths send identical input.
  const input = { ...canonical.falInput, sync_mode: canonical.responseFormat === 'b64_json' };
  const fal = opts.fal;
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    input,
    endpoint,
    fal,
    async call(signal) {
      const { falRequestId } = await fal.submit(endpoint, input, { signal });
      await fal.waitForCompletion(endpoint, falRequestId, { signal });
      const result = await fal.result(endpoint, falRequestId, { signal });
      return { upstreamId: result.falRequestId, doneAtMs: Date.now() };
    },
    async close() {},
  };
}

/**
 * The service's fal gateway (its two pools, stream limit and retry rules) as
 * the service configures it from `config`, without the service's metrics
 * and webhooks, which the bench's paths do not use.
 */
export function serviceFalGateway(config: Config): PooledFalGateway {
  return createPooledFalGateway({
    credentials: config.falKey,
    baseUrl: config.falBaseUrl,
    requestTimeoutMs: config.requestTimeoutMs,
    storeIo: config.falStoreIo,
    maxConnections: config.falMaxConnections,
    statusStreamsMax: config.statusStreamsMax,
    pollRps: config.statusPollRps,
  });
}
