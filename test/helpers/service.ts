import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config.js';
import { startService, type Service, type ServiceOverrides } from '../../src/service.js';
import { startEmulator, type Emulator, type EmulatorOptions } from '../../src/emulator/index.js';

export const TEST_KEY = 'sk-test-0123456789abcdef';
export const OTHER_KEY = 'sk-test-fedcba9876543210';
export const ADMIN_KEY = 'sk-admin-0123456789abcdef';

export interface TestService {
  service: Service;
  emulator: Emulator;
  url: string;
  key: string;
  dataDir: string;
  logs: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

/**
 * A real service listening on a free loopback port, talking over HTTP to a
 * real emulator, with its own SQLite file (or PostgreSQL when `env` sets
 * DATABASE_URL). Log lines are captured for assertions.
 */
/**
 * `emulatorOptions` configures the emulator the helper starts; pass
 * `{ use: emulator }` instead to wire an emulator the test owns (and closes).
 * `registry` replaces the catalog's models (a test that adds one).
 */
export async function startTestService(
  env: Record<string, string> = {},
  emulatorOptions: EmulatorOptions | { use: Emulator } = {},
  overrides: Pick<ServiceOverrides, 'registry'> = {},
): Promise<TestService> {
  const owned = !('use' in emulatorOptions);
  const emulator = 'use' in emulatorOptions ? emulatorOptions.use : await startEmulator({ port: 0, latencyMs: 20, ...emulatorOptions });
  const dataDir = await mkdtemp(join(tmpdir(), 'gw-test-'));
  const logs: Array<Record<string, unknown>> = [];
  // The service builds its own logger (redaction included) and writes here.
  const logDestination = { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) };
  const config = loadConfig({
    PORT: '0',
    API_KEYS: `${TEST_KEY},${OTHER_KEY}`,
    ADMIN_API_KEY: ADMIN_KEY,
    FAL_BASE_URL: emulator.url,
    FAL_KEY: 'fal-test-key',
    DATA_DIR: dataDir,
    ...env,
  });
  const service = await startService(config, { ...overrides, logDestination, emulator });
  return {
    service,
    emulator,
    url: service.url,
    key: TEST_KEY,
    dataDir,
    logs,
    async close() {
      await service.close();
      if (owned) await emulator.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
