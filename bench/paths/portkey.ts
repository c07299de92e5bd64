import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { spawnNode } from '../lib/procs.js';

/**
 * Path (c)'s gateway: Portkey's open-source gateway, the npm package as
 * published, run in a process of its own like our service in (b). It lives
 * in its own folder (bench/peer) so the service's dependencies never include it.
 */

const HERE = dirname(fileURLToPath(import.meta.url));
const PEER_DIR = join(HERE, '..', 'peer');
const PORTKEY_URL = /portkey listening on (http:\/\/\S+)/;
const PACKAGE = '@portkey-ai/gateway';
export const PORTKEY_VERSION = '1.15.2';
const ENTRY = join(PEER_DIR, 'node_modules', PACKAGE, 'build', 'start-server.js');

/** Installs the pinned version into bench/peer on first use; only the npm registry is contacted. */
export function ensurePortkeyInstalled(log: (msg: string) => void): void {
  const pkgJson = join(PEER_DIR, 'node_modules', PACKAGE, 'package.json');
  if (existsSync(pkgJson) && (JSON.parse(readFileSync(pkgJson, 'utf8')) as { version?: string }).version === PORTKEY_VERSION) return;
  log(`installing ${PACKAGE}@${PORTKEY_VERSION} into ${PEER_DIR} (once)`);
  // Scripts off: the package's own `prepare` is a dev hook, and nothing in
  // the tree needs a build step to run.
  const r = spawnSync('npm', ['install', '--prefix', PEER_DIR, '--no-audit', '--no-fund', '--ignore-scripts', '--registry=https://registry.npmjs.org/'], {
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 300_000,
  });
  if (r.status !== 0 || !existsSync(ENTRY)) throw new Error(`npm install of ${PACKAGE} failed (status ${r.status ?? r.signal})`);
}

export interface PortkeyGateway {
  readonly url: string;
  readonly pid: number;
  readonly logFile: string;
  close(): Promise<void>;
}

/**
 * Portkey in a process of its own, like the service in (b): its published
 * start script run by plain `node` (no tsx), headless, with
 * `bench/paths/portkey-loopback.mjs` preloaded so that whatever it asks
 * `listen` for becomes 127.0.0.1 and a free port (the script serves on every
 * interface otherwise). The one server it opens must report 127.0.0.1.
 */
export async function startPortkey(log: (msg: string) => void, logDir: string): Promise<PortkeyGateway> {
  ensurePortkeyInstalled(log);
  const child = await spawnNode({
    name: 'portkey',
    script: ENTRY,
    args: ['--headless'],
    tsx: false,
    nodeArgs: ['--import', pathToFileURL(join(HERE, 'portkey-loopback.mjs')).href],
    env: {},
    logDir,
    urlPattern: PORTKEY_URL,
  });
  const listening = readFileSync(child.logFile, 'utf8').match(new RegExp(PORTKEY_URL.source, 'g')) ?? [];
  if (listening.length !== 1 || !child.url.startsWith('http://127.0.0.1:')) {
    await child.stop();
    throw new Error(`expected Portkey to open one server on 127.0.0.1, saw: ${listening.join(', ')}`);
  }
  return {
    url: child.url,
    pid: child.pid,
    logFile: child.logFile,
    async close() {
      await child.stop();
    },
  };
}
