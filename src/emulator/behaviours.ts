/**
 * Where real fal is less kind than a well-behaved server, and the emulator
 * with it. Each behaviour is on by default; `kinder` (option) or
 * `EMULATOR_KINDER` (comma list) turns named ones off, so a test that relies
 * on the kinder behaviour says so by name. Behaviours fal shows only
 * sometimes are per-job faults instead (see faults.ts).
 */

export const KINDER = ['submit_validation', 'unbilled_failures', 'cancel_stops_running', 'unlimited_concurrency', 'media_never_expires'] as const;
export type Kinder = (typeof KINDER)[number];

export class KinderError extends Error {
  override name = 'KinderError';
}

/** Parses a list of kinder names (option or comma-separated env value); throws on an unknown one. */
export function parseKinder(raw: readonly string[] | string | undefined): Set<Kinder> {
  const list = typeof raw === 'string' ? raw.split(',') : (raw ?? []);
  const out = new Set<Kinder>();
  for (const item of list) {
    const name = item.trim();
    if (name === '') continue;
    if (!(KINDER as readonly string[]).includes(name)) throw new KinderError(`unknown kinder behaviour ${JSON.stringify(name)}; known: ${KINDER.join(', ')}`);
    out.add(name as Kinder);
  }
  return out;
}
