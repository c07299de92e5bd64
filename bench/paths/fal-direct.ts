import type { FalGateway } from '../../src/fal/gateway.js';
import { normalizeRequest } from '../../src/images/normalize.js';
import { createModelRegistry, defaultModels } from '../../src/models/registry.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';

/**
 * Path (a): the fal job our service would run for `body`, run straight
 * against the upstream through a fal gateway (the real `@fal-ai/client`
 * behind our transport), with the same submit → wait for completion → result
 * sequence the service uses. Given the service's own gateway instance (same
 * connection pools, stream limits and retry rules), what is left between (a)
 * and (b) is exactly our HTTP layer, validation, metering and response
 * building.
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
