import type { Database } from '../../src/db/index.js';
import type { Ledger, RequestWithJobs } from '../../src/metering/ledger.js';

/**
 * The ledger row of a request a test made, by the id the test knows: the
 * `x-request-id` it sent (the caller's label, unique only within its key),
 * or what the answer's `x-request-id` carried (that label, or our id when
 * none was sent). A label two keys used is ambiguous without `keyId`, and
 * throws rather than pick one.
 */
export async function requestRow(service: { ledger: Ledger; database: Database }, id: string, keyId?: string): Promise<RequestWithJobs | null> {
  let q = service.database.db.selectFrom('requests').select('id').where((eb) => eb.or([eb('id', '=', id), eb('client_request_id', '=', id)]));
  if (keyId !== undefined) q = q.where('key_id', '=', keyId);
  const rows = await q.execute();
  if (rows.length > 1) throw new Error(`${JSON.stringify(id)} names ${rows.length} requests (a label is unique only within its key): pass the key id`);
  return rows[0] ? service.ledger.getRequest(rows[0].id) : null;
}
