import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent, fetch } from 'undici';
import type { FalGateway } from '../../src/fal/gateway.js';
import { jobIdFor, type Ledger } from '../../src/metering/ledger.js';
import type { PricedModel } from '../../src/metering/pricing.js';
import { encodePricing, settleCompleted, type RequestPricing } from '../../src/metering/settlement.js';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';

/**
 * The service's metering contract, and nothing else of the service: the
 * reservation committed before fal is called, the job's id after the submit,
 * and the settlement committed before the answer (shared/ARCHITECTURE.md,
 * Metering), each through the service's own ledger object and statements.
 */
export interface HopLedger {
  ledger: Ledger;
  keyId: string;
  model: PricedModel & { readonly id: string };
  maxChargeMicros: bigint;
  pricing: RequestPricing;
}

/**
 * Path (h): the floor under (b). The same client as (b) posts the same body
 * to a bare `node:http` server in this process, which parses it and runs the
 * fal job of path (a) on the same gateway, then answers a small
 * OpenAI-shaped JSON. No routing, key, validation, ledger, logs or headers:
 * only the HTTP hop a gateway cannot avoid. So h−a is what any gateway built
 * this way pays before doing anything, and b−h is what ours does on top.
 *
 * Path (l), the same server given `ledger`: the hop plus exactly the three
 * ledger writes (b) makes, in (b)'s order, on (b)'s ledger. l−a is then the
 * floor under any gateway that meters as this one must (reserve before the
 * submit, settle committed before the answer), however lean its HTTP side.
 * A measuring aid, not a design: it checks nothing.
 */
export async function bareHopPath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  fal: FalGateway;
  endpoint: string;
  /** The fal input path (a) sends; the bench checks (b) sends the same. */
  input: Record<string, unknown>;
  body: Record<string, unknown>;
  ledger?: HopLedger;
}): Promise<BenchPath> {
  const { fal, endpoint, input } = opts;
  const metered = opts.ledger;
  const pricingJson = metered ? encodePricing(metered.pricing) : null;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        try {
          // Parsed like any gateway must, though the job sent is (a)'s.
          JSON.parse(Buffer.concat(chunks).toString('utf8'));
          const signal = new AbortController().signal;
          const requestId = randomUUID();
          if (metered) {
            const r = await metered.ledger.reserve({
              requestId,
              keyId: metered.keyId,
              model: metered.model.id,
              endpoint,
              user: null,
              maxChargeMicros: metered.maxChargeMicros,
              pricing: pricingJson,
              idempotencyKey: null,
              jobs: 1,
            });
            if (!r.ok) throw new Error(`reserve refused: ${r.reason}`);
          }
          const { falRequestId } = await fal.submit(endpoint, input, { signal });
          if (metered) await metered.ledger.recordSubmit({ jobId: jobIdFor(requestId, 0), falRequestId });
          await fal.waitForCompletion(endpoint, falRequestId, { signal });
          const r = await fal.result(endpoint, falRequestId, { signal });
          if (metered) {
            await settleCompleted(metered.ledger, metered.model, requestId, metered.pricing, [
              { jobId: jobIdFor(requestId, 0), falRequestId: r.falRequestId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits },
            ]);
          }
          const body = JSON.stringify({ created: Math.floor(Date.now() / 1000), data: r.output.images.map((i) => ({ url: i.url })), meta: { fal_request_id: r.falRequestId } });
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        } catch (err) {
          res.writeHead(502, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { message: (err as Error).message } }));
        }
      })();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/images/generations`;
  const payload = JSON.stringify(opts.body);
  const headers = { authorization: 'Bearer sk-bench-bare', 'content-type': 'application/json' };
  // The same client, set up the same way, as (b).
  const client = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  return {
    id: opts.id,
    label: opts.label,
    upstream: opts.upstream,
    async call(signal) {
      const res = await fetch(url, { method: 'POST', headers, body: payload, signal, dispatcher: client });
      const json = (await res.json()) as { meta?: { fal_request_id?: string }; error?: { message?: string } };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${json.error?.message ?? 'no error message'}`);
      return { upstreamId: json.meta?.fal_request_id, doneAtMs: Date.now() };
    },
    async close() {
      await client.close();
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
