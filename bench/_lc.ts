import { measureLedger } from './probes/ledger-cost.js';
for (const s of ['full','normal'] as const) for (const c of [1,16]) { const r = await measureLedger({synchronous:s, concurrency:c, durationMs:2000, maxLifecycles:5000}); console.log(s,c,r.lifecycles, r.lifecycleMs.p50.toFixed(2), r.cpuMsPerLifecycle.toFixed(2), r.throughput.toFixed(0), r.eventLoopUtilization.toFixed(2)); }
