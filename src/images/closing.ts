import type { Logger } from 'pino';
import { AnswerWithheld } from '../errors.js';
import type { Ledger, RequestRecord } from '../metering/ledger.js';
import type { PendingCloses } from '../metering/pending-closes.js';
import { encodePricing, type PricedModel, type RequestPricing } from '../metering/pricing.js';
import { asStorageError, sortStorageErrors } from '../metering/request-ledger.js';
import { closeUncharged, settleCompleted, type BillingEvents, type CompletedJob } from '../metering/settlement.js';
import { MeteringUnavailable } from './job-runner.js';
import type { Settlement } from './ports.js';

/**
 * How a request's row is closed by the process answering it, when the
 * close does not simply go through: the ledger is down (the close is kept
 * on disk and retried: pending-closes.ts), another process closed it first
 * (a reconciliation that took the caller for gone), or another process took
 * it over because this one's lease expired (leases.ts), in which case this
 * process writes neither the row nor an answer.
 */

/**
 * The use case's `Settlement` port (src/images/ports.ts): its requests'
 * rows settled on their completed jobs (settlement.ts, a billing event with
 * each when the billing webhook is on) or closed by the rules below.
 */
export function createSettlement(deps: ClosingDeps & { billingEvents?: BillingEvents | undefined }): Settlement {
  return {
    settle: (model, requestId, pricing, jobs) => sortStorageErrors(() => settleCompleted(deps.ledger, model, requestId, pricing, jobs, { billingEvents: deps.billingEvents })),
    closeUncharged: (c, log) => closeUnchargedNow(deps, c, log),
    closeLater: (c, log) => closeLater(deps, c, log),
    closedBy: (request, log) => closedBy(request, deps, log),
  };
}

/** Requests this process is working on (answering, or closing in the background): its reconciliation leaves them alone. */
export class InFlight {
  readonly #count = new Map<string, number>();
  enter(requestId: string): void {
    this.#count.set(requestId, (this.#count.get(requestId) ?? 0) + 1);
  }
  leave(requestId: string): void {
    const n = (this.#count.get(requestId) ?? 1) - 1;
    if (n <= 0) this.#count.delete(requestId);
    else this.#count.set(requestId, n);
  }
  has(requestId: string): boolean {
    return this.#count.has(requestId);
  }
}

export interface ClosingDeps {
  ledger: Ledger;
  inFlight: InFlight;
  /** This process's lease: the owner every request it takes names. */
  leaseId?: string | undefined;
  pendingCloses?: PendingCloses | undefined;
}

const HOLDING = new Set(['reserved', 'submitted']);

/**
 * A closing write changed nothing: who closed the request instead. Throws
 * `AnswerWithheld` when it is still open under another lease: its new owner
 * settles it as a request nobody answered, so no answer may be written here.
 */
export function closedBy(request: RequestRecord, deps: Pick<ClosingDeps, 'leaseId'>, log: Logger): 'settled' | 'closed' {
  if (HOLDING.has(request.status) && request.leaseId !== (deps.leaseId ?? null)) {
    log.error({ owner_lease_id: request.leaseId, lease_id: deps.leaseId }, 'lease lost: another process took this request over; this process writes neither its row nor an answer');
    throw new AnswerWithheld(request.id, request.leaseId);
  }
  return request.status === 'settled' ? 'settled' : 'closed';
}

export interface UnchargedClose {
  requestId: string;
  model: PricedModel & { id: string; endpoint?: string };
  pricing: RequestPricing;
  close: { status: 'released' | 'failed'; errorCode: string };
  jobs: readonly CompletedJob[];
}

/**
 * Closes the request uncharged now: `closed` when this call did, else who
 * did (`closedBy`). When the ledger cannot be written the close is kept and
 * retried (`closeLater`) and the caller is told metering is unavailable.
 */
export async function closeUnchargedNow(deps: ClosingDeps, c: UnchargedClose, log: Logger): Promise<'closed' | 'settled_elsewhere' | 'closed_elsewhere'> {
  let out;
  try {
    out = await closeUncharged(deps.ledger, c.model, c.requestId, c.pricing, c.close, c.jobs);
  } catch (err) {
    await closeLater(deps, c, log);
    throw new MeteringUnavailable('close', asStorageError(err));
  }
  if (out.released) return 'closed';
  return closedBy(out.request, deps, log) === 'settled' ? 'settled_elsewhere' : 'closed_elsewhere';
}

/** Retries between attempts at closing a request whose answer was an error while the ledger was down. */
const CLOSE_RETRY_MS = [1_000, 2_000, 5_000, 10_000, 30_000, 60_000];
const CLOSE_RETRY_FOR_MS = 3_600_000;

/**
 * A request answered with an error while the ledger could not be written
 * must still end uncharged once it can be: left open, reconciliation would
 * take it for a request whose caller left and charge its images. The close
 * is written to DATA_DIR before the caller is answered, then retried in the
 * background (timers unref'd, an hour at most) while the request counts as
 * in flight; a crash meanwhile leaves the file to the next reconciliation
 * round on this DATA_DIR (reconcile.ts).
 */
export async function closeLater(deps: ClosingDeps, c: UnchargedClose, log: Logger): Promise<void> {
  deps.inFlight.enter(c.requestId);
  try {
    await deps.pendingCloses?.record({ requestId: c.requestId, leaseId: deps.leaseId ?? null, model: c.model.id, ...(c.model.endpoint === undefined ? {} : { endpoint: c.model.endpoint }), pricing: encodePricing(c.pricing), close: c.close, jobs: [...c.jobs] });
  } catch (err) {
    log.error({ err }, 'could not keep the pending close on disk: should this process stop before the ledger returns, reconciliation would charge this request');
  }
  const until = Date.now() + CLOSE_RETRY_FOR_MS;
  const finished = (): void => {
    deps.inFlight.leave(c.requestId);
    void deps.pendingCloses?.done(c.requestId).catch((err: unknown) => log.warn({ err }, 'could not remove a pending close; reconciliation finds it closed'));
  };
  const attempt = (n: number): void => {
    const t = setTimeout(() => {
      closeUncharged(deps.ledger, c.model, c.requestId, c.pricing, c.close, c.jobs).then(
        (out) => {
          if (out.released) log.info('request closed uncharged once the ledger was back');
          else if (out.request.status === 'settled') log.error({ charge_micros: String(out.request.chargeMicros) }, 'a request answered with an error was settled by another process meanwhile');
          else log.warn({ status: out.request.status, owner_lease_id: out.request.leaseId }, 'a request answered with an error was closed or taken over by another process meanwhile');
          finished();
        },
        (err: unknown) => {
          if (Date.now() < until) return attempt(n + 1);
          deps.inFlight.leave(c.requestId);
          log.error({ err }, 'gave up closing a request answered while the ledger was down; the next reconciliation round on this DATA_DIR closes it uncharged');
        },
      );
    }, CLOSE_RETRY_MS[Math.min(n, CLOSE_RETRY_MS.length - 1)]);
    t.unref();
  };
  attempt(0);
}
