import type { Response } from 'express';

/**
 * Server-Sent Events on an Express response. The response starts only with
 * the first event, so everything that fails before (validation, budget, a
 * refused submit) is still an ordinary HTTP error with its status.
 */
export interface SseStream {
  /** Once true, the status line is gone: failures must travel as events. */
  readonly started: boolean;
  send(event: string, data: unknown): void;
  /** Ends a started stream; before the first event, does nothing. */
  end(): void;
}

export interface SseOptions {
  /**
   * Comment lines this often keep proxies that cut idle connections (often
   * after 60 s) from cutting a job that spends minutes in fal's queue.
   */
  keepAliveMs: number;
}

export function sseStream(res: Response, opts: SseOptions): SseStream {
  let keepAlive: NodeJS.Timeout | undefined;
  const stop = () => {
    clearInterval(keepAlive);
    keepAlive = undefined;
  };
  res.once('close', stop);
  // A caller that left must not turn our writes into errors; the use case
  // hears of it through its own signal.
  const writable = () => !res.destroyed && !res.writableEnded;

  const start = () => {
    if (res.headersSent) return;
    res.statusCode = 200;
    // setHeader rather than res.type(): the media type is sent exactly as SSE clients expect it.
    res.setHeader('content-type', 'text/event-stream');
    res.setHeader('cache-control', 'no-cache');
    // nginx buffers proxied responses unless told not to, which would hold every event until the end.
    res.setHeader('x-accel-buffering', 'no');
    res.flushHeaders();
    if (!writable()) return;
    keepAlive = setInterval(() => {
      if (writable()) res.write(': keep-alive\n\n');
      else stop();
    }, opts.keepAliveMs);
  };

  return {
    get started() {
      return res.headersSent;
    },
    send(event, data) {
      start();
      // JSON.stringify escapes every line break, so one data line carries the whole event.
      if (writable()) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    end() {
      stop();
      // A stream that never started leaves the response to the error handler.
      if (res.headersSent && writable()) res.end();
    },
  };
}
