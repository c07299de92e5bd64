import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import request from 'supertest';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';
import { formatUsd, parseUsd } from '../../src/metering/money.js';
import { ADMIN_EXPORT_COLUMNS } from '../../src/metering/views.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as a user runs it: its own process, configured only by the environment. */
function cli(args: string[], dataDir: string): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, DATA_DIR: dataDir };
  // The CLI must use the temporary SQLite store, whatever database the test runner is pointed at.
  delete env.DATABASE_URL;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('CLI: keys and usage export', () => {
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'gw-cli-'));
  });
  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('creates, lists and disables keys', async () => {
    const created = await cli(['keys', 'create', '--name', 'billing team', '--budget-usd', '12.345678', '--rpm-limit', '30', '--role', 'admin'], dataDir);
    assert.equal(created.code, 0, created.stderr);
    const record = JSON.parse(created.stdout) as Record<string, unknown>;
    assert.match(String(record.key), /^sk-/);
    assert.equal(record.budget_usd, '12.345678');
    assert.equal(record.rpm_limit, 30);
    assert.equal(record.role, 'admin');
    assert.equal(record.enabled, true);
    assert.match(created.stderr, /shown only this once/);

    const listed = await cli(['keys', 'list', '--json'], dataDir);
    assert.equal(listed.code, 0, listed.stderr);
    const list = JSON.parse(listed.stdout) as { object: string; data: Array<Record<string, unknown>> };
    assert.equal(list.object, 'list');
    assert.deepEqual(list.data.map((k) => k.id), [record.id]);
    assert.ok(!listed.stdout.includes(String(record.key)), 'the key is never listed');
    assert.ok(!('key' in list.data[0]!));

    const table = await cli(['keys', 'list'], dataDir);
    assert.equal(table.code, 0);
    assert.match(table.stdout, /^ID\s+KIND\s+ROLE\s+ENABLED\s+BUDGET_USD/);
    assert.match(table.stdout, new RegExp(`${String(record.id)}\\s+issued\\s+admin\\s+yes\\s+12\\.345678`));

    const disabled = await cli(['keys', 'disable', String(record.id)], dataDir);
    assert.equal(disabled.code, 0, disabled.stderr);
    assert.equal((JSON.parse(disabled.stdout) as { enabled: boolean }).enabled, false);
    const after = JSON.parse((await cli(['keys', 'list', '--json'], dataDir)).stdout) as { data: Array<{ enabled: boolean }> };
    assert.equal(after.data[0]!.enabled, false);

    const unknown = await cli(['keys', 'disable', 'key_nope'], dataDir);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no key with id "key_nope"/);
  });

  it('exits 2 with a clear message on a bad command line', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /Usage:/],
      [['frobnicate'], /unknown command: frobnicate/],
      [['keys'], /unknown keys command/],
      [['keys', 'create'], /needs --name/],
      [['keys', 'create', '--name', 'x', '--budget-usd', '-1'], /--budget-usd/],
      [['keys', 'create', '--name', 'x', '--budget-usd', '0.0000001'], /--budget-usd.*6 decimal places/],
      [['keys', 'create', '--name', 'x', '--rpm-limit', 'lots'], /--rpm-limit/],
      [['keys', 'create', '--name', 'x', '--role', 'root'], /--role/],
      [['keys', 'create', '--name', 'x', '--colour', 'red'], /--colour/],
      [['keys', 'disable'], /missing argument/],
      [['keys', 'disable', 'a', 'b'], /unexpected argument: b/],
      [['usage', 'export', '--format', 'xml'], /--format must be csv or jsonl/],
      [['usage', 'export', '--from', 'last tuesday'], /--from must be an ISO 8601/],
      [['usage', 'export', '--from', '2025-02-01', '--to', '2025-01-01'], /--from must not be later than --to/],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(args, dataDir)));
    for (const [i, [args, message]] of cases.entries()) {
      const run = runs[i]!;
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
      assert.match(run.stderr, message, args.join(' '));
      assert.equal(run.stdout, '', 'nothing on stdout');
    }
    const help = await cli(['help'], dataDir);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /keys create --name NAME/);
  });
});

describe('CLI against a running service', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  it('a key created by the CLI works on the service, and usage export writes its settled requests', async () => {
    const created = await cli(['keys', 'create', '--name', 'from the cli'], t.dataDir);
    assert.equal(created.code, 0, created.stderr);
    const { key, id } = JSON.parse(created.stdout) as { key: string; id: string };

    const costs: bigint[] = [];
    for (const body of [
      { model: 'alibaba/z-image-turbo', prompt: 'one' },
      { model: 'alibaba/z-image-turbo-lora', prompt: 'two', image_size: 'square', enable_prompt_expansion: true },
    ]) {
      const res = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${key}`).send(body);
      assert.equal(res.status, 200, res.text);
      costs.push(parseUsd(res.body.meta.usage.cost_usd as string));
    }
    const other = await request(t.url).post('/v1/images/generations').set('Authorization', `Bearer ${TEST_KEY}`).send({ model: 'alibaba/z-image-turbo', prompt: 'other' });
    assert.equal(other.status, 200);

    const csv = await cli(['usage', 'export', '--key-id', id], t.dataDir);
    assert.equal(csv.code, 0, csv.stderr);
    const lines = csv.stdout.split('\r\n');
    assert.equal(lines.pop(), '');
    assert.deepEqual(lines[0]!.split(','), [...ADMIN_EXPORT_COLUMNS]);
    const rows = lines.slice(1).map((l) => Object.fromEntries(l.split(',').map((v, i) => [ADMIN_EXPORT_COLUMNS[i], v])));
    assert.deepEqual(rows.map((r) => r.key_id), [id, id]);
    assert.equal(formatUsd(rows.reduce((s, r) => s + parseUsd(r.cost_usd!), 0n)), formatUsd(costs[0]! + costs[1]!));

    const jsonl = await cli(['usage', 'export', '--format', 'jsonl', '--model', 'alibaba/z-image-turbo'], t.dataDir);
    assert.equal(jsonl.code, 0, jsonl.stderr);
    const objects = jsonl.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(objects.length, 2, 'both keys, one model');
    for (const o of objects) assert.deepEqual(Object.keys(o), [...ADMIN_EXPORT_COLUMNS]);

    const future = await cli(['usage', 'export', '--from', '2999-01-01'], t.dataDir);
    assert.equal(future.code, 0);
    assert.equal(future.stdout, `${ADMIN_EXPORT_COLUMNS.join(',')}\r\n`);

    // Disabled from the CLI, refused by the running service within 5 s.
    const disabled = await cli(['keys', 'disable', id], t.dataDir);
    assert.equal(disabled.code, 0, disabled.stderr);
    const deadline = Date.now() + 5000;
    let status = 0;
    while (Date.now() < deadline) {
      status = (await request(t.url).get('/v1/usage').set('Authorization', `Bearer ${key}`)).status;
      if (status === 401) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 401);
  });
});

describe('CLI: serve and emulator', () => {
  /** Starts a long-running command, waits for the URL it prints, and stops it with SIGTERM. */
  async function runUntilListening(args: string[], env: Record<string, string>, pattern: RegExp, probe: string): Promise<void> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 30_000;
      let url: string | undefined;
      while (!url && Date.now() < deadline && child.exitCode === null) {
        url = pattern.exec(out)?.[1];
        if (!url) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(url, `no URL printed: ${out}${err}`);
      const res = await fetch(`${url}${probe}`);
      assert.equal(res.status, 200);
      child.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }

  it('serve starts the gateway as npm start does and stops on SIGTERM', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'gw-cli-serve-'));
    try {
      await runUntilListening(['serve'], { PORT: '0', DATA_DIR: dataDir, API_KEYS: TEST_KEY, LOG_LEVEL: 'silent', SHUTDOWN_MIN_DRAIN_MS: '0' }, /gateway listening on (http:\/\/\S+)/, '/healthz');
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('emulator starts the bundled fal emulator and stops on SIGTERM', async () => {
    await runUntilListening(['emulator'], { PORT: '0' }, /fal emulator listening on (http:\/\/\S+)/, '/_emulator/health');
  });
});
