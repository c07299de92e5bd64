import type { Response } from 'express';

/**
 * Resolves when the socket has taken what was queued ('drain') or the
 * connection is gone ('close'): writers of long answers wait on this instead
 * of queueing more than the socket's buffer.
 */
export function drainedOrClosed(res: Response): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
