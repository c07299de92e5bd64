import { Agent, fetch } from 'undici';
import type { BenchPath } from '../lib/paths.js';
import { idFromImageUrl, type OpenAiImagesUpstream } from '../upstreams/openai-images.js';

/**
 * An OpenAI-images request over HTTP with the same client as (b): an undici
 * keep-alive Agent. Used for (d), straight to the upstream, and for (c),
 * through the peer gateway with its routing headers, so (c)−(d) is exactly
 * the gateway in the middle.
 */
export function openAiImagesPath(opts: {
  id: string;
  label: string;
  upstream: OpenAiImagesUpstream;
  /** Base URL the client posts `/v1/images/generations` to. */
  baseUrl: string;
  headers: Record<string, string>;
  body: Record<string, unknown>;
  processes?: BenchPath['processes'];
}): BenchPath {
  const url = `${opts.baseUrl}/v1/images/generations`;
  const payload = JSON.stringify(opts.body);
  const headers = { 'content-type': 'application/json', ...opts.headers };
  const client = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    ...(opts.processes ? { processes: opts.processes } : {}),
    async call(signal) {
      const res = await fetch(url, { method: 'POST', headers, body: payload, signal, dispatcher: client });
      const json = (await res.json()) as { data?: Array<{ url?: unknown }> };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(json).slice(0, 200)}`);
      return { upstreamId: idFromImageUrl(json.data?.[0]?.url), doneAtMs: Date.now() };
    },
    async close() {
      await client.close();
    },
  };
}
