import type { Logger } from 'pino';
import type { FalGateway } from '../fal/gateway.js';
import { afterLook } from './job-state.js';
import type { JobRecord, Ledger, ListOpenOptions } from './ledger.js';
import { groupByWindow, inputHash, judgeLostSubmit, submitWindow, type ListedInput } from './lost-submits.js';
import { giveUp } from './reconcile-job.js';

/**
 * Submits whose answer never came (a job row still `submitting`, no fal id),
 * looked for in fal's request listing (the rules: lost-submits.ts). One
 * listing per endpoint and overlapping windows. Found, the job takes fal's
 * id and reconciliation settles it like any job; fal listing nothing once
 * the window has closed, it is closed `refused` at $0. A listing that
 * fails is tried again next round; a job that cannot be told (fal stored no
 * inputs, X-Fal-Store-IO: 0) stays open. Either is given up as `lost`, at
 * its estimate, once past the give-up deadline.
 */

export interface LostSubmitDeps {
  ledger: Ledger;
  fal: FalGateway;
  logger: Logger;
  now: () => number;
  giveUpAfterMs: number;
  submitTimeoutMs: number;
  /** Requests this process is working on: their submits are not lost, whatever their age (a resend may be under way). */
  inFlight?: ((requestId: string) => boolean) | undefined;
}

export interface LostSubmitReport {
  /** Lost submits found in fal's request listing: the job now has fal's id. */
  lostFound: string[];
  /** Lost submits fal's listing shows no request for: closed `refused`, $0. */
  lostAbsent: string[];
}

/**
 * `expiredLeases`: when each expired lease ran out (epoch ms); a job of a
 * request they own has its window end there (`submitWindow`).
 */
export async function findLostSubmits(deps: LostSubmitDeps, which: ListOpenOptions, expiredLeases: ReadonlyMap<string, number>, report: LostSubmitReport): Promise<void> {
  const lost = (await deps.ledger.listLostSubmits(which)).filter((job) => !deps.inFlight?.(job.requestId));
  const jobs = lost.map((job) => ({
    job,
    endpoint: job.endpoint,
    window: submitWindow(Date.parse(job.createdAt), deps.submitTimeoutMs, job.leaseId === null ? undefined : expiredLeases.get(job.leaseId)),
  }));
  for (const group of groupByWindow(jobs)) {
    let items: ListedInput[];
    try {
      // Each input is hashed as it comes and dropped: only ids, times and hashes are kept.
      items = (await deps.fal.listRequests(group.endpoint, group.window, { signal: AbortSignal.timeout(120_000) })).map((i) => ({ requestId: i.requestId, sentAtMs: i.sentAtMs, inputHash: i.input === null ? null : inputHash(i.input) }));
    } catch (err) {
      deps.logger.warn({ endpoint: group.endpoint, jobs: group.jobs.map((j) => j.job.id), err: (err as Error).message }, 'reconcile: fal’s request listing failed; lost submits are looked for again next round');
      for (const { job } of group.jobs) await giveUpIfStale(deps, job, `listing failed: ${(err as Error).message}`.slice(0, 200));
      continue;
    }
    const hashes = new Set(group.jobs.map((j) => j.job.inputHash));
    // The ledger is asked only about the requests that could be ours: a matching input, or none stored.
    const taken = await deps.ledger.knownFalIds(items.filter((i) => i.inputHash === null || hashes.has(i.inputHash)).map((i) => i.requestId));
    for (const { job, window } of group.jobs) {
      const verdict = judgeLostSubmit({ inputHash: job.inputHash, createdAtMs: Date.parse(job.createdAt) }, items, taken, window, deps.now());
      const log = deps.logger.child({ request_id: job.requestId, job_id: job.id });
      try {
        if (verdict.kind === 'found') {
          taken.add(verdict.falRequestId);
          // If the submit's own answer is recorded meanwhile, it is the same id (the listing excluded every id held): a no-op.
          await deps.ledger.recordSubmit({ jobId: job.id, falRequestId: verdict.falRequestId });
          report.lostFound.push(job.id);
          log.warn({ fal_request_id: verdict.falRequestId }, 'reconcile: a submit whose answer was lost made a job at fal; recorded under fal’s id');
        } else if (verdict.kind === 'absent') {
          await deps.ledger.closeJob({ jobId: job.id, status: 'refused', upstreamCostMicros: 0n, errorCode: 'not_listed_at_fal' });
          report.lostAbsent.push(job.id);
          log.info('reconcile: fal lists no request for a submit whose answer was lost; closed refused at $0');
        } else if (verdict.kind === 'unmatchable') {
          log.warn({ unreadable: verdict.unreadable, has_hash: job.inputHash !== null }, 'reconcile: a lost submit cannot be matched in fal’s listing (inputs not stored); left open');
          await giveUpIfStale(deps, job, `listing unmatchable: ${verdict.unreadable} requests without stored input`);
        }
      } catch (err) {
        log.error({ err }, 'reconcile: failed on a lost submit');
      }
    }
  }
}

/** A lost submit past the give-up deadline is closed `lost`, at its estimate: fal may have made and billed it. */
async function giveUpIfStale(deps: LostSubmitDeps, job: JobRecord, lastWord: string): Promise<void> {
  const step = afterLook({ seen: 'unreadable', lastWord, billedUnits: null }, { pastDeadline: deps.now() - Date.parse(job.createdAt) > deps.giveUpAfterMs, imagesUnwanted: false });
  if (step.step === 'give_up') await giveUp(deps, job, step.write, undefined);
}
