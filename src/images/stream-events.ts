/**
 * What a streaming caller is sent, built from what the use case reports; the
 * SSE framing is the HTTP layer's (src/http/sse.ts).
 */
import type { ImageGenerationCompletedEvent, ImageGenerationProgressEvent } from '../schemas/image-stream-events.js';
import type { ImagesResponseBody } from './generate.js';
import type { GenerateProgress } from './progress.js';
import type { CanonicalRequest } from './normalize.js';
import { formatUsd, parseUsd } from '../metering/money.js';
import { creditsFromMicros } from '../metering/pricing.js';

export function progressEvent(p: GenerateProgress, nowMs: number): ImageGenerationProgressEvent {
  return {
    type: 'image_generation.progress',
    status: p.status,
    queue_position: p.queuePosition,
    job_index: p.jobIndex,
    job_count: p.jobCount,
    created_at: Math.floor(nowMs / 1000),
  };
}

/**
 * One event per image of a settled response (which streaming always makes
 * base64). Each carries its share of the charge, the shares adding up to the
 * micro-dollar so a client summing them gets the bill; the last one also
 * carries the response's meta, whose usage is the total.
 */
export function completedEvents(req: CanonicalRequest, body: ImagesResponseBody): ImageGenerationCompletedEvent[] {
  const total = parseUsd(body.meta.usage.cost_usd);
  const count = BigInt(body.data.length);
  return body.data.map((item, k) => {
    if (!('b64_json' in item)) throw new Error('a streamed response must carry base64 images');
    // The remainder goes to the first images, one micro-dollar each.
    const micros = total / count + (BigInt(k) < total % count ? 1n : 0n);
    const credits = creditsFromMicros(micros);
    const last = k === body.data.length - 1;
    return {
      type: 'image_generation.completed',
      b64_json: item.b64_json,
      created_at: body.created,
      size: `${req.size.width}x${req.size.height}`,
      quality: 'auto',
      background: 'opaque',
      output_format: req.outputFormat,
      image_index: k,
      usage: { credits_used: credits, tokens_used: credits, cost_usd: formatUsd(micros) },
      ...(last ? { meta: body.meta } : {}),
    };
  });
}
