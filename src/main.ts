import { loadConfig, ConfigError } from './config.js';
import { startService } from './service.js';

/** Process concerns only: configuration, start, banner, signals. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const service = await startService(config);
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
  process.stdout.write(`\n${lines.join('\n')}\n\n`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    service.logger.info({ signal }, 'shutting down');
    service.close().then(
      () => process.exit(0),
      (err) => {
        service.logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`fatal: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
