import type { Logger } from 'pino';
import type { FalJobStatus } from '../fal/types.js';

/** A request's progress as its callers who follow along (streaming) hear it. */

export interface GenerateProgress {
  /** Which of the request's fal jobs, from 0 (n above the per-job maximum runs several). */
  jobIndex: number;
  jobCount: number;
  status: 'queued' | 'in_progress' | 'completed';
  /** Jobs ahead of this one, when fal said. */
  queuePosition: number | null;
}

const PROGRESS_STATUS = { IN_QUEUE: 'queued', IN_PROGRESS: 'in_progress', COMPLETED: 'completed' } as const;
const PROGRESS_RANK = { queued: 0, in_progress: 1, completed: 2 } as const;

/**
 * fal repeats a job's state on every poll and stream tick; a listener hears
 * only changes, and never a step back (a late poll answering IN_QUEUE after
 * the stream said IN_PROGRESS). A listener that throws must not fail a job
 * that is being billed.
 */
export function progressReporter(listener: (p: GenerateProgress) => void, log: Logger) {
  const last: Array<GenerateProgress | undefined> = [];
  return (jobIndex: number, jobCount: number, st: FalJobStatus): void => {
    const p: GenerateProgress = { jobIndex, jobCount, status: PROGRESS_STATUS[st.status], queuePosition: st.queuePosition ?? null };
    const prev = last[jobIndex];
    if (prev && (PROGRESS_RANK[p.status] < PROGRESS_RANK[prev.status] || (prev.status === p.status && (p.queuePosition === null || p.queuePosition === prev.queuePosition)))) return;
    last[jobIndex] = p;
    try {
      listener(p);
    } catch (err) {
      log.warn({ err }, 'progress listener failed');
    }
  };
}
