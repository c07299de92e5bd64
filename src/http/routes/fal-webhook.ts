import express, { Router } from 'express';
import type { Logger } from 'pino';
import { ApiError } from '../../errors.js';
import { WebhookError, type CompletionHub, type WebhookVerifier } from '../../fal/webhooks.js';

/**
 * POST /v1/fal/webhook: fal's job callbacks. The signature is the
 * authentication (no bearer key); the raw bytes are kept for it. Repeats and
 * callbacks nobody waits for (late, or for another replica) are answered 200
 * so fal stops retrying; polling covers whatever a callback did not.
 */
export const FAL_WEBHOOK_PATH = '/v1/fal/webhook';

export function falWebhookRouter(deps: { verifier: WebhookVerifier; hub: CompletionHub; logger: Logger; maxBytes: number }): Router {
  const router = Router();
  router.post(FAL_WEBHOOK_PATH, express.raw({ type: () => true, limit: deps.maxBytes }), async (req, res) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    let event;
    try {
      event = await deps.verifier.verify((name) => req.get(name), body);
    } catch (err) {
      if (!(err instanceof WebhookError)) throw err;
      deps.logger.warn({ reason: err.reason }, 'fal webhook refused');
      const status = err.reason === 'keys_unavailable' ? 503 : 401;
      throw new ApiError(status, err.message, { type: status === 503 ? 'service_unavailable' : 'authentication_error', code: `webhook_${err.reason}` });
    }
    const woke = deps.hub.notify(event.requestId);
    deps.logger.debug({ fal_request_id: event.requestId, status: event.status, woke }, 'fal webhook');
    res.json({ received: true });
  });
  return router;
}
