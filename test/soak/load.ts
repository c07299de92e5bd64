/**
 * The soak's callers: `concurrency` workers send the plan's requests in
 * order, each with its own `x-request-id`, after arming its faults at the
 * emulator; some leave early. When the request at `killIndex` is due, sending
 * pauses while the target kills the service and starts it again; requests in
 * flight at that moment lose their connection and get no answer.
 */
import type { FaultSpec } from '../../src/emulator/faults.js';
import { EDIT_IMAGE_URL, type SoakRequest } from './scenarios.js';

export interface Target {
  url(): string;
  keyFor(r: SoakRequest): string;
  arm(faults: FaultSpec[]): Promise<void>;
  /** Called once the caller is done with a request (answered, left or cut off). */
  answered(r: SoakRequest): Promise<void>;
  kill(): Promise<void>;
  /** The URL an edit's `image_url` placeholder (scenarios.ts EDIT_IMAGE_URL) stands for. */
  editImageUrl: string;
}

export interface Answer {
  index: number;
  requestId: string;
  scenario: string;
  /** null: no answer was written to this caller (it left, or the service died). */
  status: number | null;
  outcome: 'answered' | 'aborted' | 'connection_lost';
  /** `x-usage-cost-usd` */
  costUsd: string | null;
  /** `x-should-retry` */
  shouldRetry: string | null;
  /** The error's `code`, when the answer was an error. */
  code: string | null;
  /** When it was sent (epoch ms), and how long until its answer (or its end). */
  sentAt: number;
  ms: number;
}

export interface LoadResult {
  answers: Answer[];
  inFlightAtKill: number | undefined;
}

async function send(r: SoakRequest, target: Target): Promise<Answer> {
  const t0 = performance.now();
  const sentAt = Date.now();
  const controller = new AbortController();
  const timer = r.scenario.abortAfterMs === undefined ? undefined : setTimeout(() => controller.abort(), r.scenario.abortAfterMs);
  const base = { index: r.index, requestId: r.requestId, scenario: r.scenario.name, costUsd: null, shouldRetry: null, code: null, sentAt };
  let res: Response;
  try {
    res = await fetch(`${target.url()}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${target.keyFor(r)}`, 'content-type': 'application/json', 'x-request-id': r.requestId },
      body: JSON.stringify(r.body).replace(EDIT_IMAGE_URL, target.editImageUrl),
      signal: controller.signal,
    });
  } catch {
    clearTimeout(timer);
    return { ...base, status: null, outcome: controller.signal.aborted ? 'aborted' : 'connection_lost', ms: performance.now() - t0 };
  }
  // The status line and headers are the answer the service wrote; a body cut short afterwards does not unwrite it.
  let code: string | null = null;
  try {
    const text = await res.text();
    if (res.status !== 200) code = (JSON.parse(text) as { error?: { code?: string } }).error?.code ?? null;
  } catch {
    // aborted while reading, or not JSON: the status stands
  }
  clearTimeout(timer);
  if (res.headers.get('x-request-id') !== r.requestId) throw new Error(`request ${r.requestId} was answered under x-request-id ${res.headers.get('x-request-id')}`);
  return {
    ...base,
    status: res.status,
    outcome: 'answered',
    costUsd: res.headers.get('x-usage-cost-usd'),
    shouldRetry: res.headers.get('x-should-retry'),
    code,
    ms: performance.now() - t0,
  };
}

export async function runLoad(plan: readonly SoakRequest[], target: Target, o: { concurrency: number; killIndex?: number | undefined }): Promise<LoadResult> {
  const answers: Answer[] = new Array(plan.length);
  let next = 0;
  let inFlight = 0;
  let inFlightAtKill: number | undefined;
  let gate: Promise<void> = Promise.resolve();
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= plan.length) return;
      if (i === o.killIndex) {
        inFlightAtKill = inFlight;
        gate = target.kill();
      }
      await gate;
      const r = plan[i]!;
      if (r.scenario.faults.length > 0) await target.arm(r.scenario.faults);
      inFlight += 1;
      try {
        answers[i] = await send(r, target);
      } finally {
        inFlight -= 1;
      }
      await target.answered(r);
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  return { answers, inFlightAtKill };
}
