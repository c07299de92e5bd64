import { Router, type Request, type Response } from 'express';
import { forbidden, invalidRequest } from '../../errors.js';
import { INSTANT_HINT, parseInstant } from '../../metering/instant.js';
import type { Reports, UsageFilter } from '../../metering/reports.js';
import { adminUsageReportView, chunked, exportLines, usageReportView, type ExportView } from '../../metering/views.js';
import { usageQuerySchema, type UsageQuery } from '../../schemas/index.js';
import type { Principal } from '../auth.js';
import { drainedOrClosed } from '../drain.js';
import { storageBacked } from '../storage-errors.js';
import { queryValidator } from '../validate.js';

export interface UsageRouteDeps {
  reports: Reports;
}

const validateQuery = queryValidator<UsageQuery>(usageQuerySchema);

function instantParam(text: string | undefined, param: string): Date | undefined {
  if (text === undefined) return undefined;
  const at = parseInstant(text);
  if (!at) throw invalidRequest(`${param} must be ${INSTANT_HINT} (got ${JSON.stringify(text)}).`, param);
  return at;
}

/**
 * Streams with backpressure. Headers go out with the first chunk, so a
 * failure before then (the database is down) is still answered with the
 * JSON error shape; after it, app.ts's error handler cuts the connection and
 * the client sees a truncated download, never a complete-looking one.
 */
async function writeAll(res: Response, headers: Record<string, string>, chunks: AsyncIterable<string>): Promise<void> {
  for await (const chunk of chunks) {
    if (res.destroyed) return;
    if (!res.headersSent) res.status(200).set(headers);
    if (!res.write(chunk)) await drainedOrClosed(res);
  }
  if (res.destroyed) return;
  if (!res.headersSent) res.status(200).set(headers);
  res.end();
}

const CONTENT_TYPES = { csv: 'text/csv; charset=utf-8; header=present', jsonl: 'application/x-ndjson; charset=utf-8' } as const;

/**
 * `GET /v1/usage` (the caller's own key) and `GET /v1/admin/usage` (every
 * key, with upstream cost and margin). Authentication, and the admin check
 * for the admin route, are mounted in front (app.ts).
 */
export function usageRouter(deps: UsageRouteDeps): Router {
  const router = Router();

  const handle = (view: ExportView) =>
    storageBacked(async (req: Request, res: Response): Promise<void> => {
      const q = validateQuery(req.query);
      const principal = res.locals.principal as Principal;
      let keyId = q.key_id;
      if (view === 'caller') {
        // Refused rather than ignored: an ignored key_id would answer the
        // caller's own usage under another key's name, and a distinct answer
        // for existing and missing keys would let a tenant probe for ids.
        if (keyId !== undefined && keyId !== principal.keyId) throw forbidden('key_id: a key can only see its own usage; use an admin key for other keys.');
        keyId = principal.keyId;
      }
      const from = instantParam(q.from, 'from');
      const to = instantParam(q.to, 'to');
      if (from && to && from.getTime() > to.getTime()) throw invalidRequest('from must not be later than to.', 'from');
      const format = q.format ?? 'json';
      if (format !== 'json' && q.group_by !== undefined) {
        throw invalidRequest(`group_by applies to format=json; format=${format} exports one row per settled request.`, 'group_by');
      }
      const filter: UsageFilter = { from, to, model: q.model, keyId };
      res.set('cache-control', 'no-store');

      if (format === 'json') {
        const report = await deps.reports.usage({ ...filter, groupBy: q.group_by });
        const echo = {
          from: from?.toISOString() ?? null,
          to: to?.toISOString() ?? null,
          model: q.model ?? null,
          keyId: keyId ?? null,
          groupBy: q.group_by ?? null,
        };
        res.json(view === 'admin' ? adminUsageReportView(report, await deps.reports.unrecovered(filter), echo) : usageReportView(report, echo));
        return;
      }
      await writeAll(
        res,
        { 'content-type': CONTENT_TYPES[format], 'content-disposition': `attachment; filename="usage.${format}"` },
        chunked(exportLines(deps.reports.exportRows(filter), view, format)),
      );
    });

  router.get('/v1/usage', handle('caller'));
  router.get('/v1/admin/usage', handle('admin'));
  return router;
}
