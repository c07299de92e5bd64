/**
 * Standalone fal emulator (`npm run emulator`). Process concerns only: read
 * the environment, start, print the URL, shut down cleanly on SIGTERM/SIGINT.
 */
import { parseKinder } from './behaviours.js';
import { startEmulator, type EmulatorOptions } from './index.js';

function fail(message: string): never {
  console.error(`fal emulator: ${message}`);
  process.exit(2);
}

function intEnv(name: string, fallback?: number): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

function options(): EmulatorOptions {
  const env = process.env;
  const o: EmulatorOptions = {
    port: intEnv('PORT', 8090),
    host: env.HOST || '127.0.0.1',
  };
  const latency = intEnv('EMULATOR_LATENCY_MS');
  if (latency !== undefined) o.latencyMs = latency;
  const mode = env.EMULATOR_IMAGE_MODE;
  if (mode) {
    if (mode !== 'entropy' && mode !== 'cheap') fail('EMULATOR_IMAGE_MODE must be "entropy" or "cheap"');
    o.imageMode = mode;
  }
  const concurrency = intEnv('EMULATOR_CONCURRENCY');
  if (concurrency !== undefined) {
    if (concurrency < 1) fail('EMULATOR_CONCURRENCY must be at least 1');
    o.concurrency = concurrency;
  }
  if (env.EMULATOR_MEDIA_TTL_S === 'never') o.mediaTtlS = null;
  else {
    const ttl = intEnv('EMULATOR_MEDIA_TTL_S');
    if (ttl !== undefined) {
      if (ttl < 1) fail('EMULATOR_MEDIA_TTL_S must be a positive number of seconds, or "never"');
      o.mediaTtlS = ttl;
    }
  }
  if (env.EMULATOR_KINDER) {
    try {
      o.kinder = [...parseKinder(env.EMULATOR_KINDER)];
    } catch (err) {
      fail(`EMULATOR_KINDER: ${(err as Error).message}`);
    }
  }
  if (env.EMULATOR_PRICES_FILE) o.pricesFile = env.EMULATOR_PRICES_FILE;
  if (env.EMULATOR_STATE_FILE) o.stateFile = env.EMULATOR_STATE_FILE;
  if (env.EMULATOR_KEY) o.emulatorKey = env.EMULATOR_KEY;
  if (env.EMULATOR_PUBLIC_URL) o.publicUrl = env.EMULATOR_PUBLIC_URL;
  if (env.EMULATOR_WEBHOOK_USER_ID) o.webhookUserId = env.EMULATOR_WEBHOOK_USER_ID;
  const attempts = intEnv('EMULATOR_WEBHOOK_ATTEMPTS');
  const base = intEnv('EMULATOR_WEBHOOK_BASE_DELAY_MS');
  if (attempts !== undefined || base !== undefined) {
    o.webhookRetry = {};
    if (attempts !== undefined) o.webhookRetry.attempts = Math.max(1, attempts);
    if (base !== undefined) o.webhookRetry.baseDelayMs = base;
  }
  o.logger = {
    info: (obj, msg) => console.log(msg ?? '', typeof obj === 'string' ? obj : JSON.stringify(obj)),
    warn: (obj, msg) => console.warn(msg ?? '', typeof obj === 'string' ? obj : JSON.stringify(obj)),
    error: (obj, msg) => console.error(msg ?? '', obj),
  };
  return o;
}

const emulator = await startEmulator(options()).catch((err: unknown) => fail((err as Error).message));
console.log(`fal emulator listening on ${emulator.url}`);
console.log(`  images are EMULATED; point @fal-ai/client at it with FAL_BASE_URL=${emulator.url}`);
console.log(`  admin: ${emulator.url}/_emulator/health, /_emulator/billing, /_emulator/faults`);

let stopping = false;
const stop = (signal: string) => {
  if (stopping) return;
  stopping = true;
  console.log(`fal emulator: ${signal}, shutting down`);
  emulator.close().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error('fal emulator: shutdown failed', err);
      process.exit(1);
    },
  );
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
