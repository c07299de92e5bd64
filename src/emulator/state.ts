/**
 * Optional persistence of jobs, billing and the webhook signing key, so an
 * emulator restart looks to the gateway like fal carrying on: requests it
 * submitted can still be polled, fetched and reconciled, and webhooks signed
 * after the restart still verify against a cached JWKS. Writes are debounced
 * and atomic (write a temp file, then rename over the old one).
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BillingEntry, JobRecord } from './jobs.js';

export interface EmulatorState {
  version: 1;
  saved_at: string;
  seq: number;
  webhook_private_key_pem?: string;
  jobs: JobRecord[];
  billing: BillingEntry[];
}

export function readState(file: string): EmulatorState | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const state = JSON.parse(text) as EmulatorState;
  if (state.version !== 1 || !Array.isArray(state.jobs) || !Array.isArray(state.billing)) {
    throw new Error(`${file} is not an emulator state file (version 1)`);
  }
  return state;
}

export interface StateWriter {
  /** Marks the state dirty; it is written after the debounce. */
  schedule(): void;
  /** Writes now if dirty and waits for any write in progress. */
  flush(): Promise<void>;
  /** Synchronous last-chance write (process exit). */
  flushSync(): void;
}

export function createStateWriter(file: string, snapshot: () => EmulatorState, debounceMs: number, onError: (err: unknown) => void): StateWriter {
  mkdirSync(dirname(file), { recursive: true });
  let timer: NodeJS.Timeout | undefined;
  let dirty = false;
  let writing: Promise<void> | undefined;
  let counter = 0;

  const writeOnce = async () => {
    dirty = false;
    const tmp = `${file}.${process.pid}.${++counter}.tmp`;
    await writeFile(tmp, JSON.stringify(snapshot()));
    await rename(tmp, file);
  };

  const run = (): Promise<void> => {
    if (writing) return writing;
    writing = (async () => {
      try {
        while (dirty) await writeOnce();
      } catch (err) {
        onError(err);
      } finally {
        writing = undefined;
      }
    })();
    return writing;
  };

  return {
    schedule() {
      dirty = true;
      if (timer) return;
      timer = setTimeout(() => {
        timer = undefined;
        void run();
      }, debounceMs);
      timer.unref();
    },
    async flush() {
      if (timer) {
        clearTimeout(timer);
        timer = undefined;
      }
      if (writing) await writing;
      if (dirty) await run();
    },
    flushSync() {
      if (!dirty) return;
      if (timer) {
        clearTimeout(timer);
        timer = undefined;
      }
      dirty = false;
      const tmp = `${file}.${process.pid}.sync.tmp`;
      writeFileSync(tmp, JSON.stringify(snapshot()));
      renameSync(tmp, file);
    },
  };
}
