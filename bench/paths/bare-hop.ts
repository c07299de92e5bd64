import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import type { BenchPath, BenchUpstream } from '../lib/paths.js';
import { spawnNode } from '../lib/procs.js';
import { benchServiceEnv, closeChildPath, httpImagesPath } from './service.js';

const HOP_URL = /bare hop listening on (http:\/\/\S+)/;

/**
 * Paths (h) and (l), each in a process of its own started like the service
 * (`bench/paths/bare-hop-main.ts` under tsx, the service's V8 memory mode,
 * the service's environment and so its fal pools; for (l) a SQLite ledger of
 * its own in a fresh directory), and called with the same client as (b).
 * (h) is the floor under (b): h−a is what the HTTP hop alone costs, b−h what
 * the service does on top of it. (l) is the metered floor: l−a is the least
 * any gateway that meters as this one must can add, however lean its HTTP side.
 */
export async function bareHopProcessPath(opts: {
  id: string;
  label: string;
  upstream: BenchUpstream;
  falBaseUrl: string;
  body: Record<string, unknown>;
  metered: boolean;
  workDir: string;
}): Promise<BenchPath & { url: string }> {
  const dataDir = await mkdtemp(join(opts.workDir, `hop-${opts.id}-data-`));
  const child = await spawnNode({
    name: `hop-${opts.id}`,
    script: 'bench/paths/bare-hop-main.ts',
    env: { ...benchServiceEnv(opts.falBaseUrl, dataDir), HOST: '127.0.0.1', HOP_BODY: JSON.stringify(opts.body), HOP_METERED: opts.metered ? '1' : '0' },
    logDir: opts.workDir,
    urlPattern: HOP_URL,
  });
  const path = httpImagesPath({ ...opts, url: `${child.url}/v1/images/generations`, authorization: 'Bearer sk-bench-bare' });
  return {
    ...path,
    url: child.url,
    processes: [{ name: 'hop', pid: child.pid }],
    close: closeChildPath(path, child, dataDir),
  };
}
