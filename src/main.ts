import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { loadConfig, ConfigError } from './config.js';
import { logFormatFor, prettyDestination } from './logging.js';
import { startService, type Service } from './service.js';
import { heapModeByLoad, optimizeForSize } from './optimize-for-size.js';

/** Process concerns only: configuration, start, banner, signals. */
export async function runServer(env: Record<string, string | undefined> = process.env): Promise<void> {
  let config;
  try {
    config = loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  // Before the service allocates anything: the mode sizes the old generation as it grows.
  if (config.heapOptimizeForSize === true) optimizeForSize();

  // Signals are handled from the first moment: a SIGTERM that arrives while
  // we start (or right after the banner) must still shut down cleanly.
  let service: Service | undefined;
  let stopRequested: string | undefined;
  let stopping = false;
  // SIGTERM or SIGINT: drain (SHUTDOWN_MIN_DRAIN_MS listening with /readyz at
  // 503, in-flight requests finish), then exit. A second signal ends the
  // minimum drain at once; in-flight requests still get their grace period.
  const stop = (signal: string) => {
    stopRequested ??= signal;
    if (!service) return;
    if (stopping) {
      service.logger.info({ signal }, 'second signal: ending the drain');
      void service.close();
      return;
    }
    stopping = true;
    const s = service;
    s.logger.info({ signal }, 'shutting down');
    s.close({ minDrainMs: config.shutdownMinDrainMs }).then(
      () => process.exit(0),
      (err) => {
        s.logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  const pretty = logFormatFor(config.logFormat, process.stdout.isTTY === true) === 'pretty';
  service = await startService(config, pretty ? { logDestination: prettyDestination() } : {});
  if (config.heapOptimizeForSize === 'auto') {
    const server = service.server;
    heapModeByLoad({ inProgress: () => server.requestsInProgress, from: config.heapOptimizeForSizeFrom });
  }
  process.stdout.write(banner(service));
  if (stopRequested) stop(stopRequested);
}

function banner(service: Service): string {
  const lines = [`fal images gateway listening on ${service.url}`];
  if (service.emulator) {
    lines.push(
      '',
      '!!! EMULATED IMAGES: neither FAL_KEY nor FAL_BASE_URL is set, so requests go to the',
      `!!! bundled fal emulator at ${service.emulator.url}. Images are synthetic and marked`,
      '!!! EMULATED. Set FAL_KEY to generate real images on fal.ai.',
    );
  }
  if (service.generatedKey?.key) {
    lines.push(
      '',
      'No API_KEYS configured: generated an API key. It is shown ONCE; only its hash is kept',
      `(${service.generatedKey.file}):`,
      '',
      `    ${service.generatedKey.key}`,
    );
  } else if (service.generatedKey) {
    lines.push('', `No API_KEYS configured: using the key generated on ${service.generatedKey.createdAt} (hash in ${service.generatedKey.file}; delete that file to make a new one).`);
  }
  return `\n${lines.join('\n')}\n\n`;
}

// Node runs the entry by its real path: a symlinked entry (a deploy
// directory of links) is still this process's entry.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  runServer().catch((err) => {
    process.stderr.write(`fatal: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  });
}
