import { Router, type Request, type Response } from 'express';
import { forbidden, invalidRequest } from '../../errors.js';
import type { Ledger, UsageFilter } from '../../metering/ledger.js';
import { adminUsageReportView, chunked, exportLines, usageReportView, type ExportView } from '../../metering/views.js';
import { usageQuerySchema, type UsageQuery } from '../../schemas/index.js';
import type { Principal } from '../auth.js';
import { queryValidator } from '../validate.js';

export interface UsageRouteDeps {
  ledger: Ledger;
}

const validateQuery = queryValidator<UsageQuery>(usageQuerySchema);

const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * An ISO 8601 date or date-time as an exact instant. Written out rather than
 * left to `Date`, which rolls 2024-02-30 over into March and reads a
 * date-time without offset as local time; here a missing offset means UTC,
 * so the same query means the same period on every server.
 */
export function parseInstant(text: string, param: string): Date {
  const bad = () => invalidRequest(`${param} must be an ISO 8601 date or date-time, such as 2025-01-31 or 2025-01-31T12:00:00Z (got ${JSON.stringify(text.slice(0, 64))}).`, param);
  const m = ISO_8601.exec(text);
  if (!m) throw bad();
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? '0')) as [number, number, number, number, number, number];
  if (month < 1 || month > 12) throw bad();
  const lastDay = month === 2 ? (isLeap(year) ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31;
  if (day < 1 || day > lastDay || hour > 23 || minute > 59 || second > 59) throw bad();
  const fraction = m[7] ?? '';
  const offset = (m[8] ?? 'Z').toUpperCase();
  let offsetMinutes = 0;
  if (offset !== 'Z') {
    const digits = offset.slice(1).replace(':', '');
    const oh = Number(digits.slice(0, 2));
    const om = Number(digits.slice(2));
    if (oh > 23 || om > 59) throw bad();
    offsetMinutes = (offset.startsWith('-') ? -1 : 1) * (oh * 60 + om);
  }
  const base = `${m[1]}-${m[2]}-${m[3]}T${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')}:${String(second).padStart(2, '0')}.000Z`;
  // Settlement times are stored to the millisecond. Rounding a finer bound
  // up keeps both comparisons exact: t >= from ⇔ t >= ceil(from) and
  // t < to ⇔ t < ceil(to) for any millisecond t.
  const ms = Number(fraction.padEnd(9, '0').slice(0, 3)) + (/[1-9]/.test(fraction.slice(3)) ? 1 : 0);
  const at = Date.parse(base) + ms - offsetMinutes * 60_000;
  const date = new Date(at);
  const iso = date.toISOString();
  // The ledger compares fixed-width strings; years outside 0000-9999 do not fit.
  if (Number.isNaN(at) || iso.length !== 24) throw bad();
  return date;
}

function isLeap(y: number): boolean {
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
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
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
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
    async (req: Request, res: Response): Promise<void> => {
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
      const from = q.from === undefined ? undefined : parseInstant(q.from, 'from');
      const to = q.to === undefined ? undefined : parseInstant(q.to, 'to');
      if (from && to && from.getTime() > to.getTime()) throw invalidRequest('from must not be later than to.', 'from');
      const format = q.format ?? 'json';
      if (format !== 'json' && q.group_by !== undefined) {
        throw invalidRequest(`group_by applies to format=json; format=${format} exports one row per settled request.`, 'group_by');
      }
      const filter: UsageFilter = { from, to, model: q.model, keyId };
      res.set('cache-control', 'no-store');

      if (format === 'json') {
        const report = await deps.ledger.usage({ ...filter, groupBy: q.group_by });
        const echo = {
          from: from?.toISOString() ?? null,
          to: to?.toISOString() ?? null,
          model: q.model ?? null,
          keyId: keyId ?? null,
          groupBy: q.group_by ?? null,
        };
        res.json(view === 'admin' ? adminUsageReportView(report, echo) : usageReportView(report, echo));
        return;
      }
      await writeAll(
        res,
        { 'content-type': CONTENT_TYPES[format], 'content-disposition': `attachment; filename="usage.${format}"` },
        chunked(exportLines(deps.ledger.exportRows(filter), view, format)),
      );
    };

  router.get('/v1/usage', handle('caller'));
  router.get('/v1/admin/usage', handle('admin'));
  return router;
}
