/**
 * Which fal the probe talks to, and the wiring around the conversation:
 * the recording fetch under `@fal-ai/client`, the bundled emulator when no
 * fal is named, the price table, the report.
 *
 * - no FAL_KEY, no FAL_BASE_URL: the bundled emulator, started in process
 *   (defaults, except a latency long enough to see a job queued and running);
 * - FAL_BASE_URL: that fal-protocol server, addressed with host-prefixed
 *   paths (src/fal/redirect-fetch.ts); FAL_KEY as credentials, or a dummy;
 * - FAL_KEY alone: real fal, on the client's own hosts.
 */
import { createFalClient } from '@fal-ai/client';
import { startEmulator, DEFAULT_PRICES_FILE, loadPriceTable, type EmulatorOptions } from '../../src/emulator/index.js';
import { createRedirectFetch, type FetchLike } from '../../src/fal/redirect-fetch.js';
import { PLATFORM_LISTING_URL, runProbe, type ProbeOptions } from './conversation.js';
import { createFetchRecorder } from './recorder.js';
import { buildReport, type ProbeReport, type Target } from './report.js';

export type TargetSpec =
  | { kind: 'emulator'; emulator?: EmulatorOptions }
  | { kind: 'base-url'; url: string; credentials: string }
  | { kind: 'fal'; credentials: string };

/** The key sent to a FAL_BASE_URL server when FAL_KEY is unset (the emulator takes any). */
export const DUMMY_KEY = 'fal-probe-dummy-key';

/**
 * The in-process emulator: its defaults, except the latency. 2 s, a quarter
 * of it queued, leaves room for the cancel-at-once to land while the job is
 * queued and for status polls to see the next one IN_PROGRESS, without
 * making the run slow.
 */
export const PROBE_EMULATOR_OPTIONS: EmulatorOptions = { port: 0, latencyMs: 2000 };

export function targetFromEnv(env: NodeJS.ProcessEnv = process.env): TargetSpec {
  const key = env.FAL_KEY?.trim() || undefined;
  const base = env.FAL_BASE_URL?.trim() || undefined;
  if (base) return { kind: 'base-url', url: base, credentials: key ?? DUMMY_KEY };
  if (key) return { kind: 'fal', credentials: key };
  return { kind: 'emulator' };
}

export interface ProbeRunOptions extends Omit<ProbeOptions, 'client' | 'recorder' | 'credentials'> {
  /** Deadline of one HTTP call; default 30 s. */
  callTimeoutMs?: number;
  /** The price table to cost the run with; default the emulator's own (src/emulator/prices.json). */
  pricesFile?: string;
}

/** Runs the whole conversation against a target and judges it. Throws ProbeAbort when fal cannot be reached. */
export async function probe(spec: TargetSpec, opts: ProbeRunOptions = {}): Promise<ProbeReport> {
  const pricesFile = opts.pricesFile ?? DEFAULT_PRICES_FILE;
  const prices = loadPriceTable(pricesFile);
  const priceSource = opts.pricesFile ? pricesFile : 'the emulator price table (src/emulator/prices.json)';
  const { callTimeoutMs, pricesFile: _ignored, ...conversation } = opts;

  const emulator = spec.kind === 'emulator' ? await startEmulator({ ...PROBE_EMULATOR_OPTIONS, ...spec.emulator }) : undefined;
  try {
    let inner: FetchLike;
    let target: Target;
    let credentials: string;
    if (spec.kind === 'fal') {
      inner = (input, init) => fetch(input, init);
      target = { kind: 'fal', url: 'fal.ai' };
      credentials = spec.credentials;
    } else {
      const url = emulator ? emulator.url : (spec as { url: string }).url;
      inner = createRedirectFetch({ baseUrl: url });
      target = { kind: spec.kind, url };
      credentials = spec.kind === 'base-url' ? spec.credentials : DUMMY_KEY;
    }
    // Never keep in the report: the listing pages (the account's other requests, their prompts and
    // outputs) and storage initiate answers (signed upload URLs).
    const recorder = createFetchRecorder(inner, {
      ...(callTimeoutMs === undefined ? {} : { callTimeoutMs }),
      keepBody: (url) => !url.startsWith(PLATFORM_LISTING_URL) && !url.includes('/storage/upload/'),
    });
    const client = createFalClient({ credentials, fetch: recorder.fetch, suppressLocalCredentialsWarning: true });
    const obs = await runProbe({ ...conversation, client, recorder, credentials });
    return buildReport(obs, target, prices, priceSource);
  } finally {
    await emulator?.close();
  }
}
