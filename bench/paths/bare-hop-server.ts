import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FalGateway } from '../../src/fal/gateway.js';
import { jobIdFor, type Ledger } from '../../src/metering/ledger.js';
import type { PricedModel } from '../../src/metering/pricing.js';
import { encodePricing, settleCompleted, type RequestPricing } from '../../src/metering/settlement.js';

/**
 * The service's metering contract, and nothing else of the service: the
 * reservation committed before fal is called, the job's id after the submit,
 * and the settlement committed before the answer (shared/ARCHITECTURE.md,
 * Metering), each through the service's own ledger code and statements.
 */
export interface HopLedger {
  ledger: Ledger;
  keyId: string;
  model: PricedModel & { readonly id: string };
  maxChargeMicros: bigint;
  pricing: RequestPricing;
}

/**
 * The server of paths (h) and (l): a bare `node:http` server that parses the
 * body, runs the fal job of path (a) (submit → wait → result), then answers
 * a small OpenAI-shaped JSON. No routing, key, validation, logs or headers:
 * only the HTTP hop a gateway cannot avoid. Given `ledger` (path l) it also
 * makes exactly the three ledger writes the service makes, in its order, and
 * names the charge in `x-usage-cost-usd` as the service does. A measuring
 * aid, not a design: it checks nothing.
 */
export async function startBareHop(opts: { fal: FalGateway; endpoint: string; input: Record<string, unknown>; ledger?: HopLedger }): Promise<{ url: string; close(): Promise<void> }> {
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
          const headers: Record<string, string | number> = { 'content-type': 'application/json' };
          if (metered) {
            const settled = await settleCompleted(metered.ledger, metered.model, requestId, metered.pricing, [
              { jobId: jobIdFor(requestId, 0), falRequestId: r.falRequestId, images: r.output.images.map((i) => ({ width: i.width, height: i.height })), billableUnits: r.billableUnits },
            ]);
            headers['x-usage-cost-usd'] = settled.charge.usd;
          }
          const body = JSON.stringify({ created: Math.floor(Date.now() / 1000), data: r.output.images.map((i) => ({ url: i.url })), meta: { fal_request_id: r.falRequestId } });
          headers['content-length'] = Buffer.byteLength(body);
          res.writeHead(200, headers);
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
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
