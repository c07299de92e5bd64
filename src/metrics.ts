import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Prometheus metrics, one registry per service instance (no globals, so tests
 * can run several services in one process). Money counters are in USD as
 * floats: they are for dashboards; the ledger is the exact record.
 */
export interface Metrics {
  registry: Registry;
  httpRequests: Counter<'route' | 'model' | 'status'>;
  httpDuration: Histogram<'route'>;
  falJobDuration: Histogram<'model' | 'outcome'>;
  falCallDuration: Histogram<'phase'>;
  jobsInFlight: Gauge;
  upstreamStatusRequests: Counter;
  imagesDelivered: Counter<'model'>;
  callerChargeUsd: Counter<'model'>;
  upstreamCostUsd: Counter<'model'>;
  refusals: Counter<'reason'>;
  unitsDisagreements: Counter<'model'>;
  rateLimitFailOpen: Counter;
  rateLimitStoreUp: Gauge;
  unrecoveredCostUsd: Gauge<'model'>;
  /** Where the unrecovered-cost gauge reads the ledger at scrape time (set once the ledger's reports exist). */
  ledgerReads: { unrecovered?: () => Promise<ReadonlyArray<{ model: string; usd: string }>> };
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const r = [registry];
  const ledgerReads: Metrics['ledgerReads'] = {};
  return {
    registry,
    ledgerReads,
    // Read from the ledger at each scrape, so every replica reports the same total, crashes and reconciliation included.
    unrecoveredCostUsd: new Gauge({
      name: 'gateway_unrecovered_cost_usd',
      help: 'Upstream cost no caller is charged for (failed jobs fal billed, jobs of requests answered with an error, strays), USD, from the ledger.',
      labelNames: ['model'],
      registers: r,
      async collect() {
        const rows = await ledgerReads.unrecovered?.().catch(() => undefined);
        if (!rows) return;
        this.reset();
        for (const row of rows) this.set({ model: row.model }, Number(row.usd));
      },
    }),
    httpRequests: new Counter({ name: 'gateway_http_requests_total', help: 'HTTP requests answered, by route, model and status.', labelNames: ['route', 'model', 'status'], registers: r }),
    httpDuration: new Histogram({
      name: 'gateway_http_request_duration_seconds',
      help: 'Time from request to response, our side (includes waiting for fal).',
      labelNames: ['route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers: r,
    }),
    falJobDuration: new Histogram({
      name: 'gateway_fal_job_duration_seconds',
      help: 'fal side: from submit to result for one job.',
      labelNames: ['model', 'outcome'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers: r,
    }),
    falCallDuration: new Histogram({
      name: 'gateway_fal_call_duration_seconds',
      help: 'One HTTP call to fal, by phase (submit, status, result, cancel).',
      labelNames: ['phase'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: r,
    }),
    jobsInFlight: new Gauge({ name: 'gateway_jobs_in_flight', help: 'Image requests being processed now.', registers: r }),
    upstreamStatusRequests: new Counter({ name: 'gateway_fal_status_requests_total', help: 'Status requests (polls and status streams) sent to fal.', registers: r }),
    imagesDelivered: new Counter({ name: 'gateway_images_delivered_total', help: 'Images returned to callers.', labelNames: ['model'], registers: r }),
    callerChargeUsd: new Counter({ name: 'gateway_caller_charge_usd_total', help: 'What callers were charged, USD.', labelNames: ['model'], registers: r }),
    upstreamCostUsd: new Counter({ name: 'gateway_upstream_cost_usd_total', help: 'What fal billed us, USD.', labelNames: ['model'], registers: r }),
    refusals: new Counter({ name: 'gateway_refusals_total', help: 'Requests refused before fal, by reason (rate_limit, budget, in_flight, rate_limiter_unavailable, request_timeout, max_connections...).', labelNames: ['reason'], registers: r }),
    unitsDisagreements: new Counter({ name: 'gateway_units_disagreements_total', help: 'Jobs where fal billed a different quantity than our estimate.', labelNames: ['model'], registers: r }),
    rateLimitFailOpen: new Counter({ name: 'gateway_rate_limit_fail_open_total', help: 'Requests let through because the rate-limit store was unreachable.', registers: r }),
    rateLimitStoreUp: new Gauge({ name: 'gateway_rate_limit_store_up', help: 'Whether the rate-limit store answered when last used or checked (1) or not (0); always 1 in process.', registers: r }),
  };
}
