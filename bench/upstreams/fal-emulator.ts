import type { Emulator } from '../../src/emulator/index.js';
import type { BenchUpstream } from '../lib/paths.js';

/** The bundled fal emulator as a benchmark upstream. */
export function falEmulatorUpstream(emu: Emulator, label: string): BenchUpstream {
  return {
    label,
    reset: () => emu.reset(),
    completedAtMs(id) {
      return emu.job(id)?.completed_at;
    },
    counters() {
      const s = emu.stats();
      const jobs = s.submit ?? 0;
      return {
        jobs,
        calls: { status: s.status ?? 0, stream: s.stream ?? 0, result: s.result ?? 0, cancel: s.cancel ?? 0 },
      };
    },
  };
}
