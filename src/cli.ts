/**
 * One command-line entry: `serve`, `emulator`, `keys create|list|disable`,
 * `usage export`. The key and usage commands open the service's own
 * database (DATABASE_URL, else SQLite under DATA_DIR) directly, so they work
 * whether or not a server is running, and print what the admin API would.
 *
 * Exit codes: 0 done, 1 failed (unknown key, database unreachable), 2 the
 * command line or the configuration is wrong.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { loadConfig, ConfigError } from './config.js';
import type { Database } from './db/index.js';
import type { KeyRecord } from './metering/keys-store.js';
import { INSTANT_HINT, parseInstant } from './metering/instant.js';
import { MoneyError, parseUsd } from './metering/money.js';
import { chunked, exportLines, keyView } from './metering/views.js';

const USAGE = `Usage: npm run cli -- <command> [options]     (or: npx tsx src/cli.ts <command>)

Commands:
  serve                         Start the gateway, exactly as \`npm start\` (configured by the environment).
  emulator                      Start the bundled fal emulator, exactly as \`npm run emulator\`.
  keys create --name NAME [--budget-usd USD] [--rpm-limit N] [--role user|admin]
                                Create an API key; prints it (shown this once only) with its record as JSON.
  keys list [--json]            List keys (never the key or its hash).
  keys disable ID               Disable a key; every server refuses it within 5 seconds.
  usage export [--from ISO] [--to ISO] [--model M] [--key-id K] [--format csv|jsonl]
                                Write settled requests to stdout (default csv), filtered on settlement
                                time: --from inclusive, --to exclusive.
  help                          This text.

The keys and usage commands use the service's database: PostgreSQL when DATABASE_URL is set,
otherwise SQLite under DATA_DIR (default ./data).

Exit codes: 0 success, 1 failure (unknown key, database unreachable), 2 bad command line or configuration.
`;

/** A mistake on the command line: reported with the usage text, exit code 2. */
class UsageError extends Error {}

/** A command that ran and failed: exit code 1. */
class CommandError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;

function parse<O extends Options>(args: string[], options: O, positionals: number) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (parsed.positionals.length !== positionals) {
    const extra = parsed.positionals.slice(positionals);
    throw new UsageError(extra.length > 0 ? `unexpected argument: ${extra.join(' ')}` : 'missing argument');
  }
  return parsed;
}

const keysStore = async (database: Database) => (await import('./metering/keys-store.js')).createKeysStore(database);
const reports = async (database: Database) => (await import('./metering/reports.js')).createReports(database);

async function withDatabase<T>(run: (database: Database) => Promise<T>): Promise<T> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
  // Loaded here, not at the top: a mistyped command answers without loading the database drivers.
  const { createDatabase } = await import('./db/index.js');
  const database = await createDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  try {
    return await run(database);
  } finally {
    await database.close();
  }
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

function positiveInt(text: string, flag: string): number {
  if (!/^[1-9][0-9]{0,6}$/.test(text) || Number(text) > 1_000_000) throw new UsageError(`${flag} must be an integer from 1 to 1000000 (got ${JSON.stringify(text)})`);
  return Number(text);
}

async function keysCreate(args: string[]): Promise<void> {
  const { values } = parse(
    args,
    {
      name: { type: 'string' },
      'budget-usd': { type: 'string' },
      'rpm-limit': { type: 'string' },
      role: { type: 'string' },
    },
    0,
  );
  const name = values.name;
  if (name === undefined || name.trim() === '') throw new UsageError('keys create needs --name');
  if (name.length > 200) throw new UsageError('--name must be at most 200 characters');
  const role = values.role ?? 'user';
  if (role !== 'user' && role !== 'admin') throw new UsageError(`--role must be user or admin (got ${JSON.stringify(role)})`);
  let budgetMicros: bigint | null = null;
  if (values['budget-usd'] !== undefined) {
    try {
      budgetMicros = parseUsd(values['budget-usd']);
    } catch (err) {
      if (err instanceof MoneyError) throw new UsageError(`--budget-usd: ${err.message.replaceAll('a USD amount', 'the budget')}`);
      throw err;
    }
  }
  const rpmLimit = values['rpm-limit'] === undefined ? null : positiveInt(values['rpm-limit'], '--rpm-limit');
  const created = await withDatabase(async (database) => (await keysStore(database)).create({ name, role, budgetMicros, rpmLimit }));
  printJson({ ...keyView(created.record), key: created.key });
  process.stderr.write('Store the key now: it is shown only this once (only its hash is kept).\n');
}

function keysTable(keys: KeyRecord[]): string {
  const header = ['ID', 'KIND', 'ROLE', 'ENABLED', 'BUDGET_USD', 'SPENT_USD', 'RPM', 'NAME'];
  const rows = keys.map((k) => {
    const v = keyView(k);
    return [v.id, v.kind, v.role, v.enabled ? 'yes' : 'no', v.budget_usd ?? '-', v.spent_usd, v.rpm_limit === null ? '-' : String(v.rpm_limit), v.name];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  // The name is last and unpadded: it is free text and may be long.
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

async function keysList(args: string[]): Promise<void> {
  const { values } = parse(args, { json: { type: 'boolean' } }, 0);
  const keys = await withDatabase(async (database) => (await keysStore(database)).list());
  if (values.json) printJson({ object: 'list', data: keys.map(keyView) });
  else process.stdout.write(keys.length === 0 ? 'No keys.\n' : keysTable(keys));
}

async function keysDisable(args: string[]): Promise<void> {
  const { positionals } = parse(args, {}, 1);
  const id = positionals[0]!;
  const disabled = await withDatabase(async (database) => {
    const store = await keysStore(database);
    const existing = await store.get(id);
    if (!existing) throw new CommandError(`no key with id ${JSON.stringify(id)} (keys list shows the ids)`);
    if (existing.kind === 'static') {
      throw new CommandError(`${id} is configured in the environment (API_KEYS or ADMIN_API_KEY); remove it there to revoke it`);
    }
    return store.disable(id);
  });
  if (!disabled) throw new CommandError(`no key with id ${JSON.stringify(id)}`);
  printJson(keyView(disabled));
}

function instantFlag(text: string | undefined, flag: string): Date | undefined {
  if (text === undefined) return undefined;
  const at = parseInstant(text);
  if (!at) throw new UsageError(`${flag} must be ${INSTANT_HINT} (got ${JSON.stringify(text)})`);
  return at;
}

async function writeOut(chunk: string): Promise<void> {
  if (process.stdout.write(chunk)) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      process.stdout.off('drain', done);
      process.stdout.off('close', done);
      resolve();
    };
    process.stdout.on('drain', done);
    process.stdout.on('close', done);
  });
}

async function usageExport(args: string[]): Promise<void> {
  const { values } = parse(
    args,
    {
      from: { type: 'string' },
      to: { type: 'string' },
      model: { type: 'string' },
      'key-id': { type: 'string' },
      format: { type: 'string' },
    },
    0,
  );
  const from = instantFlag(values.from, '--from');
  const to = instantFlag(values.to, '--to');
  if (from && to && from.getTime() > to.getTime()) throw new UsageError('--from must not be later than --to');
  const format = values.format ?? 'csv';
  if (format !== 'csv' && format !== 'jsonl') throw new UsageError(`--format must be csv or jsonl (got ${JSON.stringify(format)})`);
  await withDatabase(async (database) => {
    const rows = (await reports(database)).exportRows({ from, to, model: values.model, keyId: values['key-id'] });
    for await (const chunk of chunked(exportLines(rows, 'admin', format))) {
      // A reader that went away (`| head`) ends the export; it is not an error.
      if (process.stdout.destroyed) return;
      await writeOut(chunk);
    }
  });
}

const COMMANDS = new Map<string, (args: string[]) => Promise<void>>([
  ['keys create', keysCreate],
  ['keys list', keysList],
  ['keys disable', keysDisable],
  ['usage export', usageExport],
  [
    'serve',
    async (args) => {
      parse(args, {}, 0);
      const { runServer } = await import('./main.js');
      await runServer();
    },
  ],
  [
    'emulator',
    async (args) => {
      parse(args, {}, 0);
      // The emulator's entry is a script: importing it runs it.
      await import('./emulator/main.js');
    },
  ],
]);

export async function runCli(argv: string[]): Promise<number> {
  const [first, second, ...rest] = argv;
  if (first === undefined || first === 'help' || first === '--help' || first === '-h') {
    (first === undefined ? process.stderr : process.stdout).write(USAGE);
    return first === undefined ? 2 : 0;
  }
  const grouped = first === 'keys' || first === 'usage';
  const command = COMMANDS.get(grouped ? `${first} ${second ?? ''}` : first);
  const args = grouped ? rest : argv.slice(1);
  if (!command) {
    process.stderr.write(`${grouped ? `unknown ${first} command: ${second ?? '(none)'}` : `unknown command: ${first}`}\n\n${USAGE}`);
    return 2;
  }
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  try {
    await command(args);
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    if (err instanceof CommandError) {
      process.stderr.write(`error: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`);
    return 1;
  }
}

// Only the exit code is set: the process ends once stdout has drained and
// the database is closed, and `serve`/`emulator` keep it alive while they run.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
});
process.exitCode = await runCli(process.argv.slice(2));
