import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * How to start a TypeScript file as its own Node process: when the tests run
 * compiled (scripts/test-build.mjs), its compiled `.js` beside it, with no
 * loader; otherwise the `.ts` through tsx. Either way the same code runs;
 * the compiled file spares the process tsx's module hooks (about a CPU
 * second for a process that loads the service).
 */
export function tsEntry(url: URL): { file: string; execArgv: string[] } {
  const compiled = new URL(url.href.replace(/\.ts$/, '.js'));
  if (import.meta.url.endsWith('.js') && existsSync(compiled)) return { file: fileURLToPath(compiled), execArgv: ['--enable-source-maps'] };
  return { file: fileURLToPath(url), execArgv: ['--import', 'tsx'] };
}
