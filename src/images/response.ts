import type { FalResult } from '../fal/types.js';
import type { Charge } from '../metering/pricing.js';
import type { ImagesResponse } from '../schemas/images-response.js';
import type { Media } from './ports.js';
import type { CanonicalRequest } from './normalize.js';

/** The domain result → the OpenAI/aimlapi images JSON (`data[].url | b64_json`, `meta.usage`). */

type ImageItem = ImagesResponse['data'][number];

export interface ResponseInput {
  req: CanonicalRequest;
  /** The completed jobs, in job order. */
  results: readonly FalResult[];
  charge: Charge;
  /** The seed the request's jobs were derived from, when we chose or derived one. */
  baseSeed: number | undefined;
  nowMs: number;
  publicBaseUrl: string;
  /** The API key's id: the tenant our own image URLs are signed for. */
  tenant: string;
  /** Ours (the ledger row's id), which the `x-request-id` header does not carry when the caller sent its own. */
  requestId: string;
}

export async function imagesResponse(input: ResponseInput, media: Media): Promise<ImagesResponse> {
  const { req, results, charge } = input;
  const images = results.flatMap((r) => r.output.images);
  const nsfw = results.flatMap((r) => r.output.images.map((_, k) => r.output.has_nsfw_concepts?.[k] === true));
  const falIds = results.map((r) => r.falRequestId);
  const firstSeed = results[0]?.output.seed;
  return {
    created: Math.floor(input.nowMs / 1000),
    data: await imageItems(input, media),
    output_format: req.outputFormat,
    size: `${req.size.width}x${req.size.height}`,
    meta: {
      usage: { credits_used: charge.credits, tokens_used: charge.credits, cost_usd: charge.usd },
      seed: input.baseSeed ?? (typeof firstSeed === 'number' ? firstSeed : null),
      images: images.map((i, k) => ({ width: i.width, height: i.height, content_type: i.content_type, has_nsfw_concept: nsfw[k] === true })),
      request_id: input.requestId,
      fal_request_id: falIds[0]!,
      fal_request_ids: falIds,
      ...(req.ignoredParams.length > 0 ? { ignored_params: [...req.ignoredParams] } : {}),
    },
  };
}

/**
 * The images as the caller asked for them, each from the media port. Base64
 * stays as the Buffers it came in (fal's result body, or our download of it)
 * until the route writes them. A download that fails throws the media
 * layer's MediaError.
 */
async function imageItems(input: ResponseInput, media: Media): Promise<ImageItem[]> {
  const { req, results } = input;
  if (req.responseFormat === 'b64_json') {
    return Promise.all(results.flatMap((r) => r.output.images.map((i) => media.b64Item(r, i.url))));
  }
  return results.flatMap((r) => r.output.images.map((i) => ({ url: media.clientUrl(r, i.url, input.publicBaseUrl, input.tenant) })));
}
