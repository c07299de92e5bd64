import type { Response } from 'express';
import type { Logger } from 'pino';
import type { GenerateContext, ImageService } from '../images/generate.js';
import type { CanonicalRequest } from '../images/normalize.js';
import { progressReporter } from '../images/progress.js';
import { completedEvents, progressEvent } from '../images/stream-events.js';
import type { RequestLocals } from './waiting-requests.js';
import { sseStream } from './sse.js';

/**
 * `stream: true` answers (the images route's `ImageStreams`): progress while
 * fal works, then one completed event per image. The images and their charge
 * come from the same settled outcome as a JSON answer, so a streamed request
 * is billed exactly like one; the usage headers cannot follow a started
 * body, so usage rides in the events. The use case reports every state fal
 * reports; the caller hears the changes (src/images/progress.ts).
 */
export function imageStreams(deps: { images: ImageService; keepAliveMs: number; logger: Logger }) {
  return {
    async answer(res: Response, canonical: CanonicalRequest, ctx: GenerateContext): Promise<void> {
      const sse = sseStream(res, { keepAliveMs: deps.keepAliveMs });
      const log = deps.logger.child({ request_id: ctx.requestId, client_request_id: ctx.clientRequestId, model: canonical.model.id });
      ctx.onJobStatus = progressReporter((p) => sse.send('image_generation.progress', progressEvent(p, Date.now())), log);
      const outcome = await deps.images.generate(canonical, ctx);
      (res.locals as RequestLocals).falRequestId = outcome.falRequestIds[0];
      for (const event of completedEvents(canonical, outcome.body)) sse.send('image_generation.completed', event);
      sse.end();
    },
  };
}
