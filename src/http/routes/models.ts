import { Router } from 'express';
import { notFound } from '../../errors.js';
import type { ModelRegistry } from '../../models/registry.js';
import { describeModel } from '../../models/describe.js';
import type { Markup } from '../../metering/money.js';

export function modelsRouter(deps: { registry: ModelRegistry; markup: Markup }): Router {
  const router = Router();
  router.get('/v1/models', (_req, res) => {
    res.json({ object: 'list', data: deps.registry.list().map((m) => describeModel(m, deps.markup)) });
  });
  // Model ids contain slashes (`alibaba/z-image-turbo`), which OpenAI SDKs send unescaped.
  router.get('/v1/models/*id', (req, res) => {
    const id = ((req.params as { id?: string[] }).id ?? []).join('/');
    const entry = deps.registry.lookup(id);
    if (!entry) throw notFound(`The model ${JSON.stringify(id.slice(0, 200))} does not exist.`, 'model_not_found', 'model');
    res.json(describeModel(entry, deps.markup));
  });
  return router;
}
