/**
 * fal's late word on jobs given up as `lost`. A job is given up at its
 * deadline (JOB_GIVE_UP_MS) at what fal last reported or at its estimate;
 * fal may still run it afterwards (a queue backed up for longer than the
 * deadline, a cancel a running app ignored) and bill what it really used.
 * For `LATE_WORD_WATCH_MS` after the give-up, each reconciliation round asks
 * fal about a page of such jobs; one fal completed is recorded as completed
 * at fal's units (the ledger's completeLostJob, which keeps the give-up's
 * error code; the request's upstream cost follows), so the ledger's
 * upstream cost ends at what fal billed, all of it unrecovered. The caller's
 * charge never changes: only a job whose request has closed is asked about,
 * since reconciliation settles a request still holding on the jobs that
 * completed, and a closed request never reopens.
 *
 * The page moves on from round to round (a cursor in this process, wrapping
 * around), so a backlog of lost jobs costs each round at most `perRound`
 * looks, and at most `budgetMs` of waiting for fal: rounds run one at a
 * time, and a fal that hangs must not hold up the settlement of open
 * requests in the next one. A look the budget cuts short changes nothing;
 * the next round starts from that job. Rounds of several processes may look at the same job; recording a
 * completion twice changes nothing the second time.
 */
import type { Logger } from 'pino';
import type { FalGateway } from '../fal/gateway.js';
import type { ModelRegistry } from '../models/registry.js';
import type { JobRecord, Ledger } from './ledger.js';
import type { Markup } from './money.js';
import { HOLDING } from './ledger-statements.js';
import { lookAtFal } from './reconcile-job.js';
import { completions, decodePricing } from './settlement.js';

/** How long after its give-up a lost job is still asked about. */
export const LATE_WORD_WATCH_MS = 24 * 60 * 60_000;
/** Lost jobs looked at per round. */
export const LATE_WORD_PER_ROUND = 20;
/** How long a round's page may wait for fal in all. */
export const LATE_WORD_BUDGET_MS = 10_000;

export interface LateWordDeps {
  ledger: Ledger;
  fal: FalGateway;
  registry: ModelRegistry;
  markup: Markup;
  logger: Logger;
  now: () => number;
  watchMs?: number | undefined;
  perRound?: number | undefined;
  budgetMs?: number | undefined;
}

export interface LateWord {
  /** One round: the ids of the jobs it recorded as completed. */
  run(): Promise<string[]>;
}

export function createLateWord(deps: LateWordDeps): LateWord {
  let after: { at: string; id: string } | undefined;
  return {
    async run() {
      const since = new Date(deps.now() - (deps.watchMs ?? LATE_WORD_WATCH_MS)).toISOString();
      const limit = deps.perRound ?? LATE_WORD_PER_ROUND;
      const jobs = await deps.ledger.listLostJobs({ since, after, limit });
      const budget = AbortSignal.timeout(deps.budgetMs ?? LATE_WORD_BUDGET_MS);
      const completed: string[] = [];
      let looked = 0;
      for (const job of jobs) {
        if (budget.aborted) break;
        try {
          if (await lookAgain(deps, job, budget)) completed.push(job.id);
        } catch (err) {
          deps.logger.warn({ err, job_id: job.id, fal_request_id: job.falRequestId }, 'reconcile: could not ask fal again about a lost job');
        }
        // A look the budget cut short is taken again next round.
        if (!budget.aborted) looked++;
      }
      // The next round goes on after the last job looked at, or starts over once a short page was looked at whole (the end of the list).
      const last = jobs[looked - 1];
      if (looked === jobs.length && jobs.length < limit) after = undefined;
      else if (last) after = { at: last.completedAt ?? since, id: last.id };
      return completed;
    },
  };
}

async function lookAgain(deps: LateWordDeps, job: JobRecord, budget: AbortSignal): Promise<boolean> {
  const request = await deps.ledger.getRequest(job.requestId);
  // A request still holding is settled by reconciliation on the jobs that completed: this one, completed now, would be charged. Closed, it never reopens.
  if (!request || HOLDING.includes(request.status)) return false;
  const model = deps.registry.forEndpoint(request.model, request.endpoint);
  if (!model) return false;
  const seen = await lookAtFal(deps, job, budget);
  if (!seen.completed || budget.aborted) return false;
  const [input] = completions(model, decodePricing(request.pricing, deps.markup), [seen.completed]);
  const out = await deps.ledger.completeLostJob(input!);
  if (out.changed) {
    deps.logger.warn(
      { request_id: job.requestId, job_id: job.id, fal_request_id: job.falRequestId, lost_cost_micros: String(job.upstreamCostMicros), upstream_cost_micros: String(out.job.upstreamCostMicros) },
      'reconcile: a job given up as lost completed at fal later; its cost is now what fal billed (nobody is charged)',
    );
  }
  return out.changed;
}
