/**
 * The `RequestLedger` port over the ledger (src/metering/request-ledger.ts):
 * the reservation hashes each job's input onto its row and answers the jobs'
 * ids in job order; storage's failures reach the use case as StorageError,
 * sorted by src/db/errors.ts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StorageError } from '../../src/errors.js';
import { jobIdFor } from '../../src/metering/job-ids.js';
import type { Ledger, ReserveInput } from '../../src/metering/ledger.js';
import { inputHash } from '../../src/metering/lost-submits.js';
import { requestLedger } from '../../src/metering/request-ledger.js';

const reservation = { requestId: 'req-1', keyId: 'k', model: 'm', endpoint: 'fal-ai/m', maxChargeMicros: 10n };

describe('requestLedger', () => {
  it('reserves one row per job input, each with its input hash, and answers their ids in job order', async () => {
    const seen: ReserveInput[] = [];
    const ledger = { reserve: async (input: ReserveInput) => (seen.push(input), { ok: true as const }) } as unknown as Ledger;
    const inputs = [{ prompt: 'a', seed: 1 }, { seed: 2, prompt: 'a' }];
    const out = await requestLedger(ledger).reserve({ ...reservation, jobInputs: inputs });
    assert.deepEqual(out, { ok: true, jobIds: [jobIdFor('req-1', 0), jobIdFor('req-1', 1)] });
    assert.equal(seen[0]!.jobs, 2);
    assert.deepEqual(seen[0]!.inputHashes, inputs.map(inputHash));
    assert.equal('jobInputs' in seen[0]!, false, 'the inputs themselves are not handed to the ledger');
  });

  it('answers a refusal as the ledger gave it', async () => {
    const refused = { ok: false as const, reason: 'request_id_taken' as const };
    const ledger = { reserve: async () => refused } as unknown as Ledger;
    assert.deepEqual(await requestLedger(ledger).reserve({ ...reservation, jobInputs: [{}] }), refused);
  });

  it('throws storage failures as StorageError: unreachable is unavailable, a refused statement is not; the cause is the driver’s error', async () => {
    const unreachable = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    const duplicate = Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' });
    for (const [err, unavailable] of [[unreachable, true], [duplicate, false]] as const) {
      const ledger = { recordSubmit: async () => Promise.reject(err), getRequest: async () => Promise.reject(err) } as unknown as Ledger;
      const port = requestLedger(ledger);
      for (const call of [() => port.recordSubmit({ jobId: 'j', falRequestId: 'f' }), () => port.getRequest('req-1')]) {
        await assert.rejects(call(), (e: unknown) => e instanceof StorageError && e.unavailable === unavailable && e.cause === err);
      }
    }
  });
});
