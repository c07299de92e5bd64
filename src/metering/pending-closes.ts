import { createHash } from 'node:crypto';
import { open, mkdir, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { CompletedJob } from './settlement.js';

/**
 * Requests answered with an error while the ledger could not be written:
 * they must end uncharged, but the ledger is where that would be said. So
 * the close is written here first, one small file per request under
 * DATA_DIR, synced before the caller is answered; the process retries it
 * in the background, and if it dies first, the next reconciliation round on
 * this DATA_DIR (reconcile.ts) closes the request uncharged from the file
 * before anything could take it for a request whose caller left and charge
 * it. A process on another host, without this directory, cannot know:
 * docs/BILLING.md says what that means.
 */

export interface PendingClose {
  requestId: string;
  /** The lease the request was taken under: a later process takes it over from there. */
  leaseId: string | null;
  model: string;
  /** The fal endpoint the request ran on (an edit's has its own price); absent in files written before it was kept. */
  endpoint?: string;
  /** The request's encoded pricing (settlement.ts `encodePricing`). */
  pricing: string | null;
  close: { status: 'released' | 'failed'; errorCode: string };
  /** Completed jobs, recorded with the close at what fal billed. */
  jobs: CompletedJob[];
}

export interface PendingCloses {
  /** Written and synced before it returns. */
  record(entry: PendingClose): Promise<void>;
  done(requestId: string): Promise<void>;
  list(): Promise<PendingClose[]>;
}

export function createPendingCloses(dir: string): PendingCloses {
  // A request id may hold any printable character: the file is named by its hash.
  const file = (requestId: string) => join(dir, `${createHash('sha256').update(requestId).digest('hex').slice(0, 32)}.json`);
  return {
    async record(entry) {
      await mkdir(dir, { recursive: true });
      const target = file(entry.requestId);
      const tmp = `${target}.${process.pid}.tmp`;
      const handle = await open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(JSON.stringify(entry));
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, target);
    },
    async done(requestId) {
      await unlink(file(requestId)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    },
    async list() {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw err;
      }
      const out: PendingClose[] = [];
      for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
        try {
          out.push(JSON.parse(await readFile(join(dir, name), 'utf8')) as PendingClose);
        } catch (err) {
          // Removed by another process meanwhile, or not JSON (not ours): skipped.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && !(err instanceof SyntaxError)) throw err;
        }
      }
      return out;
    },
  };
}
