import { performance } from 'node:perf_hooks';
import type { FalGateway } from '../../src/fal/gateway.js';
import type { Ledger } from '../../src/metering/ledger.js';

/**
 * Where the time between "fal finished the job" and "the client has the
 * answer" goes. Wraps the gateway's and the ledger's methods on live objects
 * (the service calls them through the same objects) to stamp each step, so
 * nothing in src/ changes for a diagnosis. Used only in the diagnostic pass:
 * the wrapping is cheap but it is not the code being measured.
 */

export interface JobMarks {
  clientStartHr?: number;
  /** Service only: the reservation, the first thing after HTTP, auth, body and validation. */
  reserveStartHr?: number;
  reserveEndHr?: number;
  /** fal's submit answered. */
  submitHr?: number;
  /** Service only: the job id is committed to the ledger. */
  recordedHr?: number;
  /** Date.now() when waitForCompletion resolved: the clock the upstream's completed_at uses. */
  notifiedAtMs?: number;
  notifiedHr?: number;
  resultHr?: number;
  /** settleJobs (the jobs' rows and the charge, one transaction): the write between the result and the response. */
  settleStartHr?: number;
  settleEndHr?: number;
  clientHr?: number;
}

export type LedgerOp = 'reserve' | 'recordSubmit' | 'settleJobs';

export interface Timeline {
  jobs: Map<string, JobMarks>;
  /** Wall time of each ledger call (lock wait included), ms. */
  ledger: Record<LedgerOp, number[]>;
  /** Marks when the client sent the request and when it held the response. */
  clientDone(falRequestId: string, startedHr: number): void;
  restore(): void;
}

export function instrument(fal: FalGateway, ledger?: Ledger): Timeline {
  const jobs = new Map<string, JobMarks>();
  const reservations = new Map<string, { start: number; end: number }>();
  const ops: Record<LedgerOp, number[]> = { reserve: [], recordSubmit: [], settleJobs: [] };
  const marks = (id: string) => {
    let m = jobs.get(id);
    if (!m) jobs.set(id, (m = {}));
    return m;
  };
  const undo: Array<() => void> = [];
  const wrap = <T extends object, K extends keyof T>(obj: T, key: K, make: (orig: T[K]) => T[K]) => {
    const orig = obj[key];
    obj[key] = make(orig);
    undo.push(() => {
      obj[key] = orig;
    });
  };

  wrap(fal, 'submit', (orig) => async (endpoint, input, o) => {
    const r = await orig.call(fal, endpoint, input, o);
    marks(r.falRequestId).submitHr = performance.now();
    return r;
  });
  wrap(fal, 'waitForCompletion', (orig) => async (endpoint, id, o) => {
    await orig.call(fal, endpoint, id, o);
    const m = marks(id);
    m.notifiedAtMs = Date.now();
    m.notifiedHr = performance.now();
  });
  wrap(fal, 'result', (orig) => async (endpoint, id, o) => {
    const r = await orig.call(fal, endpoint, id, o);
    marks(id).resultHr = performance.now();
    return r;
  });

  const byRequest = new Map<string, string>();
  if (ledger) {
    const timed = <K extends LedgerOp>(op: K, after?: (input: Parameters<Ledger[K]>[0], t0: number, t1: number) => void) =>
      wrap(ledger, op, (orig) => (async (input: Parameters<Ledger[K]>[0]) => {
        const t0 = performance.now();
        const out = await (orig as (i: typeof input) => Promise<unknown>).call(ledger, input);
        const t1 = performance.now();
        ops[op].push(t1 - t0);
        after?.(input, t0, t1);
        return out;
      }) as unknown as Ledger[K]);
    timed('reserve', (i, t0, t1) => reservations.set(i.requestId, { start: t0, end: t1 }));
    timed('recordSubmit', (i, _t0, t1) => {
      // A job id is `<request id>/<index>` (jobIdFor).
      const requestId = i.jobId.slice(0, i.jobId.lastIndexOf('/'));
      byRequest.set(requestId, i.falRequestId);
      const m = marks(i.falRequestId);
      m.recordedHr = t1;
      const r = reservations.get(requestId);
      reservations.delete(requestId);
      if (r) {
        m.reserveStartHr = r.start;
        m.reserveEndHr = r.end;
      }
    });
    timed('settleJobs', (i, t0, t1) => {
      const id = byRequest.get(i.settle.requestId);
      if (!id) return;
      marks(id).settleStartHr = t0;
      marks(id).settleEndHr = t1;
    });
  }

  return {
    jobs,
    ledger: ops,
    clientDone(id, startedHr) {
      const m = marks(id);
      m.clientHr = performance.now();
      m.clientStartHr = startedHr;
    },
    restore() {
      for (const u of undo.reverse()) u();
    },
  };
}
