import { Router } from 'express';

export interface ReadinessCheck {
  name: string;
  check: () => Promise<boolean>;
  /**
   * Default true: failing makes the process not ready (503). A check that is
   * not required only marks it `degraded`: it still serves, with less (the
   * rate limiter failing open), and a balancer should keep sending to it.
   */
  required?: boolean;
}

/** `/healthz`: the process answers. `/readyz`: it can do useful work now. */
export function healthRouter(checks: ReadinessCheck[], isShuttingDown: () => boolean): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', async (_req, res) => {
    const results: Record<string, boolean> = {};
    await Promise.all(
      checks.map(async (c) => {
        results[c.name] = await c.check().catch(() => false);
      }),
    );
    const failed = checks.filter((c) => !results[c.name]);
    const degraded = failed.filter((c) => c.required === false).map((c) => c.name);
    const shuttingDown = isShuttingDown();
    const ready = !shuttingDown && failed.length === degraded.length;
    const status = shuttingDown ? 'shutting_down' : !ready ? 'not_ready' : degraded.length > 0 ? 'degraded' : 'ready';
    res.status(ready ? 200 : 503).json({ status, checks: results, ...(degraded.length > 0 ? { degraded } : {}) });
  });
  return router;
}
