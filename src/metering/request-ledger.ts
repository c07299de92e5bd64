/**
 * The usage ledger as one image request uses it: the `RequestLedger` port
 * (src/images/ports.ts) over ledger.ts. The reservation writes each job's
 * row under its id (job-ids.ts) with the hash of the input the job will be
 * sent (lost-submits.ts: how reconciliation finds a submit whose answer was
 * lost), and answers the ids. Whatever storage throws reaches the use case
 * as a StorageError (src/errors.ts), sorted here by src/db/errors.ts.
 */
import { isStorageUnavailable } from '../db/errors.js';
import { StorageError } from '../errors.js';
import type { RequestLedger } from '../images/ports.js';
import { jobIdFor } from './job-ids.js';
import type { Ledger } from './ledger.js';
import { inputHash } from './lost-submits.js';

export function requestLedger(ledger: Ledger): RequestLedger {
  return {
    async reserve({ jobInputs, ...input }) {
      // Only the hashes go to the write; the inputs themselves are never stored.
      const inputHashes = jobInputs.map(inputHash);
      const reserved = await sortStorageErrors(() => ledger.reserve({ ...input, jobs: inputHashes.length, inputHashes }));
      return reserved.ok ? { ok: true, jobIds: inputHashes.map((_, i) => jobIdFor(input.requestId, i)) } : reserved;
    },
    recordSubmit: (input) => sortStorageErrors(() => ledger.recordSubmit(input)),
    closeJob: (input) => sortStorageErrors(() => ledger.closeJob(input)),
    recordStrays: (input) => sortStorageErrors(() => ledger.recordStrays(input)),
    getRequest: (requestId) => sortStorageErrors(() => ledger.getRequest(requestId)),
  };
}

/** What `fn` throws, as a StorageError: unavailable when src/db/errors.ts says so, refused otherwise. */
export async function sortStorageErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asStorageError(err);
  }
}

export function asStorageError(err: unknown): StorageError {
  return err instanceof StorageError ? err : new StorageError(isStorageUnavailable(err), err);
}
