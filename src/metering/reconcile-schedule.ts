import type { Logger } from 'pino';
import type { Reconciler, ReconcileReport } from './reconcile.js';

/**
 * When reconciliation rounds run: one at start-up, one every `intervalMs`
 * (0 = start-up only), and one as soon as another process's lease expires,
 * should that process be dead (a restart after a crash finds its old lease
 * still live for up to LEASE_EXPIRY_MS). One round at a time: a slow fal
 * must not pile rounds up.
 */
export interface ReconcileSchedule {
  /** Runs the start-up round and starts the interval; resolves with the start-up round's report. */
  start(): Promise<ReconcileReport | undefined>;
  /** Starts no further round; resolves when the one running (if any) ends. */
  stop(): Promise<void>;
}

export interface ReconcileScheduleDeps {
  reconciler: Reconciler;
  logger: Logger;
  /** RECONCILE_AFTER_MS: rows younger than this are left to the process working on them. */
  olderThanMs: number;
  /** RECONCILE_INTERVAL_MS. */
  intervalMs: number;
}

/** After another process's lease expires: room for a renewal already on its way. */
const LEASE_EXPIRY_MARGIN_MS = 250;

export function createReconcileSchedule({ reconciler, logger, olderThanMs, intervalMs }: ReconcileScheduleDeps): ReconcileSchedule {
  let running: Promise<ReconcileReport | undefined> | undefined;
  let stopped = false;
  let interval: NodeJS.Timeout | undefined;
  let leaseWatch: NodeJS.Timeout | undefined;

  const round = (): Promise<ReconcileReport | undefined> => {
    running ??= reconciler
      .run({ olderThanMs })
      .then((report) => {
        if (worthLogging(report)) logger.info({ reconcile: report }, 'reconciled open requests');
        watchLease(report.nextLeaseExpiryMs);
        return report;
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'reconciliation failed');
        return undefined;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  };

  /** A round when the lease expires, unless the interval's round comes first. */
  const watchLease = (expiresAtMs: number | undefined): void => {
    if (expiresAtMs === undefined || stopped || leaseWatch) return;
    const waitMs = Math.max(0, expiresAtMs - Date.now()) + LEASE_EXPIRY_MARGIN_MS;
    if (intervalMs > 0 && waitMs >= intervalMs) return;
    leaseWatch = setTimeout(() => {
      leaseWatch = undefined;
      if (!stopped) void round();
    }, waitMs);
    leaseWatch.unref();
  };

  return {
    start() {
      const first = round();
      if (intervalMs > 0) {
        interval = setInterval(() => void round(), intervalMs);
        interval.unref();
      }
      return first;
    },
    async stop() {
      stopped = true;
      if (interval) clearInterval(interval);
      if (leaseWatch) clearTimeout(leaseWatch);
      await running;
    },
  };
}

function worthLogging(report: ReconcileReport): boolean {
  return report.examined > 0 || report.lostFound.length > 0 || report.lostAbsent.length > 0 || report.lateCompleted.length > 0 || report.pendingClosed.length > 0 || report.jobsClosed.length > 0 || (report.slicesReturned ?? 0) > 0;
}
