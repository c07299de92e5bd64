import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmulator, type Emulator } from '../../src/emulator/index.js';
import type { Database } from '../../src/db/index.js';
import { createKeysStore } from '../../src/metering/keys-store.js';
import { TEST_KEY } from '../helpers/service.js';
import { startServiceProcess, until, type ServiceProcess as Proc } from '../helpers/service-process.js';
import { createStorage, postgresAvailability, serviceEnv, type TestStorage } from '../helpers/databases.js';

/**
 * A key with a budget served by two service processes on one PostgreSQL,
 * each reserving from its own slice of the budget (src/metering/budget-slices.ts):
 * never overspent, never refusing what the budget can still cover, and a
 * SIGKILLed process's slice back on the key once its lease has expired and
 * reconciliation has run.
 */
const pg = await postgresAvailability();
const skip = pg.ok ? false : process.env.CI ? false : `PostgreSQL not reachable: ${(pg as { reason: string }).reason}`;

const N = 6;

describe('budget slices across two processes on PostgreSQL', { skip }, () => {
  let emulator: Emulator;
  let storage: TestStorage;
  let database: Database;
  let dataDir: string;
  let env: Record<string, string>;
  const procs: Proc[] = [];

  before(async () => {
    if (!pg.ok) throw new Error(`CI must run this: ${(pg as { reason: string }).reason}`);
    emulator = await startEmulator({ port: 0, latencyMs: 400 });
    storage = await createStorage('postgres');
    dataDir = await mkdtemp(join(tmpdir(), 'gw-slices-'));
    env = {
      ...(await serviceEnv(storage)),
      FAL_BASE_URL: emulator.url,
      FAL_KEY: 'k',
      API_KEYS: TEST_KEY,
      DATA_DIR: dataDir,
      DEFAULT_RPM_LIMIT: '0',
      LEASE_RENEW_MS: '1000',
      LEASE_EXPIRY_MS: '3000',
      RECONCILE_INTERVAL_MS: '1000',
    };
    database = await storage.open();
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await storage?.destroy();
    await emulator?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const once = (p: Proc, key: string, prompt: string) =>
    fetch(`${p.url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'alibaba/z-image-turbo', image_size: 'square', prompt }),
    })
      .then(async (r) => ({ status: r.status, body: (await r.json()) as { error?: { code?: string } } }))
      .catch(() => ({ status: 0, body: {} as { error?: { code?: string } } }));
  /** As a client would: a 503 (a lease renewal late on a loaded machine; nothing was done) is sent again. */
  const post = async (p: Proc, key: string, prompt: string) => {
    for (let i = 0; ; i++) {
      const r = await once(p, key, prompt);
      if (r.status !== 503 || i === 20) return r;
      await new Promise((res) => setTimeout(res, 200));
    }
  };

  /** One request's maximum charge, read from the row of a request by a key without a budget. */
  async function oneImage(p: Proc): Promise<bigint> {
    assert.equal((await post(p, TEST_KEY, 'probe')).status, 200);
    const row = await database.db.selectFrom('requests').select('reserved_micros').orderBy('created_at', 'desc').executeTakeFirstOrThrow();
    return BigInt(row.reserved_micros);
  }

  const keyRow = (id: string) => database.db.selectFrom('api_keys').select(['spent_micros', 'reserved_micros']).where('id', '=', id).executeTakeFirstOrThrow();
  const settledCharges = async (id: string) =>
    (await database.db.selectFrom('requests').select('charge_micros').where('key_id', '=', id).where('status', '=', 'settled').execute()).reduce((s, r) => s + BigInt(r.charge_micros), 0n);

  it(`a budget of ${N} images and ${4 * N} concurrent requests over both processes: exactly ${N} served`, async () => {
    procs.push(await startServiceProcess(env));
    procs.push(await startServiceProcess(env));
    const [a, b] = procs as [Proc, Proc];
    const image = await oneImage(a);
    const issued = await createKeysStore(database).create({ name: 'sliced', budgetMicros: image * BigInt(N) });
    const answers = await Promise.all(Array.from({ length: 4 * N }, (_, i) => post(i % 2 ? a : b, issued.key, `burst ${i}`)));
    const served = answers.filter((r) => r.status === 200).length;
    assert.equal(served, N, answers.map((r) => r.status).join(','));
    assert.ok(answers.every((r) => r.status === 200 || (r.status === 429 && r.body.error?.code === 'insufficient_quota')));
    // Which process served how many depends on which requests came first; every hold came from a slice.
    const funded = await database.db.selectFrom('requests').select('funded_by').where('key_id', '=', issued.record.id).execute();
    assert.ok(funded.length === N && funded.every((r) => r.funded_by === 'slice'), 'every hold came from a budget slice');
    // Both processes return their slices once idle: the key row then holds nothing, and counts every charge.
    const row = await until(async () => {
      const k = await keyRow(issued.record.id);
      return BigInt(k.reserved_micros) === 0n ? k : undefined;
    }, 'both slices returned', 15_000);
    assert.equal(BigInt(row.spent_micros), await settledCharges(issued.record.id));
    assert.ok(BigInt(row.spent_micros) <= image * BigInt(N));
  });

  it('a SIGKILL mid-burst: once the lease expired and reconciliation ran, nothing is held and spend is the charges allowed', async () => {
    const [a, b] = procs as [Proc, Proc];
    const image = await oneImage(b);
    const issued = await createKeysStore(database).create({ name: 'killed', budgetMicros: image * BigInt(N) });
    // The first process's half goes first, so it surely holds a slice when it dies; the second's joins before the kill.
    const burst = Array.from({ length: 2 * N }, (_, i) => post(a, issued.key, `kill burst a${i}`));
    // Kill once the first process holds a slice of this key and has requests of it in flight.
    const lease = await database.db.selectFrom('leases').select('id').where('pid', '=', BigInt(a.child.pid!)).executeTakeFirstOrThrow();
    await until(async () => {
      const open = await database.db.selectFrom('requests').select('id').where('key_id', '=', issued.record.id).where('lease_id', '=', lease.id).where('status', 'in', ['reserved', 'submitted']).execute();
      const slice = await database.db.selectFrom('budget_slices').select('id').where('key_id', '=', issued.record.id).where('lease_id', '=', lease.id).executeTakeFirst();
      return open.length > 0 && slice ? true : undefined;
    }, 'the first process to hold a slice with requests in flight', 15_000);
    burst.push(...Array.from({ length: 2 * N }, (_, i) => post(b, issued.key, `kill burst b${i}`)));
    a.child.kill('SIGKILL');
    await a.exited;
    const answers = await Promise.all(burst);
    const served = answers.filter((r) => r.status === 200).length;
    assert.ok(served <= N);
    // The dead process's lease expires (3 s); the survivor's rounds (every 1 s) settle its requests and return its slice.
    // A request killed before its submit left keeps its hold until fal's listing shows no job for it, which
    // can take the submit's whole window (SUBMIT_TIMEOUT_MS, 60 s): so up to 150 s here.
    const row = await until(async () => {
      const open = await database.db.selectFrom('requests').select('id').where('key_id', '=', issued.record.id).where('status', 'in', ['reserved', 'submitted']).execute();
      const slices = await database.db.selectFrom('budget_slices').select('id').where('key_id', '=', issued.record.id).execute();
      const k = await keyRow(issued.record.id);
      return open.length === 0 && slices.length === 0 && BigInt(k.reserved_micros) === 0n ? k : undefined;
    }, 'the dead process’s slice returned', 150_000);
    const charges = await settledCharges(issued.record.id);
    assert.equal(BigInt(row.spent_micros), charges, 'the key counts exactly its settled requests’ charges');
    assert.ok(charges <= image * BigInt(N), 'never overspent');
    // Charged: answered 200, or completed at fal after its caller left (the dead process's): never a request fal did not complete.
    const settled = await database.db.selectFrom('requests').select(['id', 'charge_micros']).where('key_id', '=', issued.record.id).where('status', '=', 'settled').execute();
    assert.ok(settled.length >= served);
    for (const r of settled) {
      const jobs = await database.db.selectFrom('upstream_jobs').select(['status']).where('request_id', '=', r.id).execute();
      assert.ok(jobs.every((j) => j.status === 'completed'), `request ${r.id} is charged only on completed jobs`);
    }
    b.child.kill('SIGTERM');
    await b.exited;
  });
});
