import type { FalResult } from '../fal/types.js';
import { inlineDataUri } from '../fal/inline-images.js';
import type { Charge } from '../metering/pricing.js';
import type { ImagesResponse } from '../schemas/images-response.js';
import { b64Item } from './b64-item.js';
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
 * The images as the caller asked for them. Base64 stays as the Buffers it
 * came in (fal's result body, or our download of it) until the route writes
 * them (b64-item.ts). A download that fails throws the media layer's MediaError.
 */
async function imageItems(input: ResponseInput, media: Media): Promise<ImageItem[]> {
  const { req, results } = input;
  if (req.responseFormat === 'b64_json') {
    return Promise.all(results.flatMap((r) => r.output.images.map(async (i) => b64Item(r.inlineImages?.get(i.url) ?? (await media.base64(i.url))))));
  }
  return results.flatMap((r) => r.output.images.map((i) => ({ url: media.toClientUrl(inlineAsUrl(r, i.url), input.publicBaseUrl, input.tenant) })));
}

/** fal sent an image inline although we asked for a URL (no sync_mode): the caller gets the data URI fal sent. */
function inlineAsUrl(r: FalResult, url: string): string {
  const inline = r.inlineImages?.get(url);
  return inline ? inlineDataUri(inline) : url;
}
