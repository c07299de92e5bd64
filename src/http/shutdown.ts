import { ALL_ANSWERED, type HttpServer } from './http-server.js';

export interface DrainOptions {
  /**
   * Keep listening at least this long, even with nothing in flight: a load
   * balancer learns of the shutdown from /readyz answering 503 (or from 503s),
   * and until it has, a closed port is a refused connection for its callers.
   */
  minDrainMs: number;
  /** Resolves to end the minimum drain early (a second signal). */
  minDrainCut: Promise<void>;
  /** Requests in progress have this long from the start of the drain to finish. */
  graceMs: number;
  /** Called once if requests are still in progress when the grace period ends; they should then be aborted. */
  onGraceOver: () => void;
  /** Once the port is closed: how long answers still being written (aborted requests' errors) get before connections are cut. */
  abortDrainMs: number;
}

/**
 * Takes an HTTP server out of service. The caller has already turned readiness
 * and new requests to 503 (the app refuses them itself); this keeps the port
 * open while the load balancer notices, lets requests in progress finish
 * within the grace period, then closes. Resolves once the server is closed.
 */
export async function drainServer(server: HttpServer, o: DrainOptions): Promise<void> {
  // Both clocks start now: the minimum drain runs alongside the grace period.
  const minDrainOver = Promise.race([delay(o.minDrainMs), o.minDrainCut]);
  const answered = new Promise<boolean>((resolve) => (server.requestsInProgress === 0 ? resolve(true) : server.once(ALL_ANSWERED, () => resolve(true))));
  const inTime = await Promise.race([answered, delay(o.graceMs).then(() => false)]);
  if (!inTime && server.requestsInProgress > 0) o.onGraceOver();
  await minDrainOver;

  const closed = new Promise<boolean>((resolve) => server.close(() => resolve(false)));
  server.closeIdleConnections();
  // What remains are answers being written (503s, aborted requests' errors):
  // a bounded moment, then the sockets are cut so a stuck client cannot hold shutdown.
  if (await Promise.race([closed, delay(o.abortDrainMs).then(() => true)])) {
    server.closeAllConnections();
    await closed;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
