import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { Server as NetServer, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * Path (c)'s gateway: Portkey's open-source gateway, the npm package as
 * published, run in this process like our service in (b), so both gateways
 * share the event loop with the client and the upstream and their CPU per
 * request compares directly. It lives in its own folder (bench/peer) so the
 * service's dependencies never include it.
 */

const PEER_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'peer');
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
  readonly address: AddressInfo;
  close(): Promise<void>;
}

let started: PortkeyGateway | undefined;

/**
 * The package ships only its start script, which builds the Hono app and
 * then serves it on every interface (`serve({fetch, port})` with no
 * hostname) at a port taken from argv. Rather than patch the file, the import
 * runs with `net.Server.prototype.listen` wrapped so that whatever it asks
 * for becomes 127.0.0.1 and a free port; the wrapper also captures the
 * server so it can be closed. Side effects meant for an interactive terminal
 * (console.clear, process-wide handlers that swallow uncaught errors) are
 * kept out of this process for the duration.
 */
export async function startPortkey(log: (msg: string) => void): Promise<PortkeyGateway> {
  if (started) return started;
  ensurePortkeyInstalled(log);

  const listen = NetServer.prototype.listen;
  const captured: NetServer[] = [];
  const listenOn = listen as unknown as (this: NetServer, port: number, host: string, cb?: () => void) => NetServer;
  const forced = function (this: NetServer, ...args: unknown[]) {
    captured.push(this);
    return listenOn.call(this, 0, '127.0.0.1', args.find((a): a is () => void => typeof a === 'function'));
  };
  const clear = console.clear;
  const handlers = { uncaughtException: process.listeners('uncaughtException'), unhandledRejection: process.listeners('unhandledRejection') };
  const argv = process.argv;
  // The start script reads --port and --headless from argv; ours carry bench options.
  process.argv = [argv[0]!, ENTRY, '--headless'];
  NetServer.prototype.listen = forced as typeof listen;
  console.clear = () => {};
  // Its banner would announce localhost:8787, which is not where it listens here.
  const write = process.stdout.write;
  process.stdout.write = (() => true) as typeof process.stdout.write;
  try {
    await import(pathToFileURL(ENTRY).href);
  } finally {
    NetServer.prototype.listen = listen;
    console.clear = clear;
    process.stdout.write = write;
    process.argv = argv;
    for (const l of process.listeners('uncaughtException')) if (!handlers.uncaughtException.includes(l)) process.off('uncaughtException', l);
    for (const l of process.listeners('unhandledRejection')) if (!handlers.unhandledRejection.includes(l)) process.off('unhandledRejection', l);
  }
  if (captured.length !== 1) throw new Error(`expected Portkey to open one server, saw ${captured.length}`);
  const server = captured[0] as Server;
  if (!server.listening) await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  const address = server.address() as AddressInfo;
  if (address.address !== '127.0.0.1') throw new Error(`Portkey listens on ${address.address}, not 127.0.0.1`);
  started = {
    url: `http://127.0.0.1:${address.port}`,
    address,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      started = undefined;
    },
  };
  return started;
}
