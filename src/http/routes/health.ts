import { Router } from 'express';

export interface ReadinessCheck {
  name: string;
  check: () => Promise<boolean>;
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
    const shuttingDown = isShuttingDown();
    const ready = !shuttingDown && Object.values(results).every(Boolean);
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : shuttingDown ? 'shutting_down' : 'not_ready', checks: results });
  });
  return router;
}
