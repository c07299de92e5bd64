import assert from 'node:assert/strict';
import { it } from 'node:test';
import { CompiledQuery, type KyselyPlugin } from 'kysely';
import pg from 'pg';
import { createLedger, jobIdFor, strayIdFor } from '../../src/metering/ledger.js';
import { pgStatements } from '../../src/metering/ledger-pg.js';
import type { Database } from '../../src/db/index.js';
import { GROUPED_WRITE_SETTINGS } from '../../src/db/database.js';
import { POSTGRES_URL, describeEachDialect, type DialectContext } from '../helpers/databases.js';
import { keyWithBudget, reserveInput, uid } from '../helpers/ledger.js';

/**
 * The request path's writes as PostgreSQL runs them, one statement each
 * (src/metering/ledger-pg.ts), against what
 * the transactions SQLite runs answer: the same rows and results.
 */
describeEachDialect('the request path in one statement per write', (ctx: DialectContext) => {
  it('settles several jobs with a stray and a job completed before, counting each cost once', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const requestId = uid('req');
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 2, inputHashes: ['h0', 'h1'], estimates: [7n, 8n] }), { ok: true });
    const [one, two] = [jobIdFor(requestId, 0), jobIdFor(requestId, 1)];
    const reserved = await ledger.getRequest(requestId);
    assert.deepEqual(reserved?.jobs.map((j) => [j.id, j.status, j.inputHash, j.estimateMicros]), [
      [one, 'submitting', 'h0', 7n],
      [two, 'submitting', 'h1', 8n],
    ]);
    const submitted = await ledger.recordSubmit({ jobId: one, falRequestId: uid('fal') });
    assert.deepEqual([submitted.id, submitted.status], [one, 'submitted']);
    assert.equal((await ledger.getRequest(requestId))?.status, 'reserved');
    await ledger.recordSubmit({ jobId: two, falRequestId: uid('fal') });
    const stray = uid('fal');
    await ledger.recordStrays({ requestId, endpoint: 'e', falRequestIds: [stray] });
    await ledger.completeJob({ jobId: strayIdFor(requestId, stray), images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 1_000n });
    // The first job completed already (reconciliation, say): its cost stays what it is.
    await ledger.completeJob({ jobId: one, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 300n });
    const jobs = [
      { jobId: one, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 999n },
      { jobId: two, images: 2, pixels: 2, unitsEstimate: '2', unitsFal: '3', upstreamCostMicros: 20n },
    ];
    const out = await ledger.settleJobs({ jobs, settle: { requestId, chargeMicros: 50n, credits: 5, images: 3 } });
    assert.deepEqual(out.jobs.map((j) => [j.job.id, j.changed, j.unitsMismatch, j.job.upstreamCostMicros, j.job.status]), [
      [one, false, false, 300n, 'completed'],
      [two, true, true, 20n, 'completed'],
    ]);
    const r = out.settlement.request;
    assert.deepEqual([out.settlement.settled, r.status, r.chargeMicros, r.credits, r.images, r.upstreamCostMicros], [true, 'settled', 50n, 5n, 3, 1_320n]);
    assert.equal((await ledger.getRequest(requestId))?.upstreamCostMicros, 1_320n);
  });

  it('leaves a request another process took over, and its jobs, to that process', async () => {
    const database = await ctx.open();
    const mine = createLedger(database, { leaseId: 'lease-a', budgetSlices: false });
    const keyId = await keyWithBudget(database, null);
    const requestId = uid('req');
    await mine.reserve({ ...reserveInput(keyId, 100n, requestId), jobs: 1 });
    const job = jobIdFor(requestId, 0);
    await mine.recordSubmit({ jobId: job, falRequestId: uid('fal') });
    assert.equal(await mine.adopt({ requestId, fromLeaseId: 'lease-a', toLeaseId: 'lease-b' }), true);
    const out = await mine.settleJobs({ jobs: [{ jobId: job, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 5n }], settle: { requestId, chargeMicros: 9n, credits: 1, images: 1 } });
    assert.equal(out.settlement.settled, false);
    const row = await mine.getRequest(requestId);
    assert.deepEqual([row?.status, row?.chargeMicros, row?.leaseId], ['reserved', 0n, 'lease-b']);
    // The job is a fact from fal whoever owns the request: recorded, with the request's cost, uncharged.
    assert.deepEqual([row?.jobs[0]?.status, row?.upstreamCostMicros], ['completed', 5n]);
  });

  it('refuses a label the key already used, and writes no job row for it', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const first = uid('req');
    const second = uid('req');
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 1n, first), clientRequestId: 'label', jobs: 1 }), { ok: true });
    assert.deepEqual(await ledger.reserve({ ...reserveInput(keyId, 1n, second), clientRequestId: 'label', jobs: 1 }), { ok: false, reason: 'request_id_taken' });
    assert.equal(await ledger.getRequest(second), null);
  });

  it('writes many requests at once exactly as it writes each alone, in few statements on PostgreSQL', async () => {
    const { database, statements } = counted(await ctx.open());
    const mine = createLedger(database, { leaseId: 'lease-m', budgetSlices: false });
    const keyId = await keyWithBudget(database, null);
    const ids = Array.from({ length: 20 }, () => uid('req'));
    const jobs = ids.map((id) => jobIdFor(id, 0));
    const before = statements();
    const reserved = await Promise.all(ids.map((id, i) => mine.reserve({ ...reserveInput(keyId, 10n, id), jobs: 1, inputHashes: [`h${i}`], estimates: [BigInt(i)] })));
    assert.ok(reserved.every((r) => r.ok));
    const falIds = jobs.map(() => uid('fal'));
    const submitted = await Promise.all(jobs.map((jobId, i) => mine.recordSubmit({ jobId, falRequestId: falIds[i]! })));
    assert.deepEqual(submitted.map((j) => [j.id, j.falRequestId, j.status]), jobs.map((j, i) => [j, falIds[i], 'submitted']));
    // The last request was taken over by another process before its settle: that one is not this process's to settle.
    assert.equal(await mine.adopt({ requestId: ids[19]!, fromLeaseId: 'lease-m', toLeaseId: 'lease-other' }), true);
    const settled = await Promise.all(
      ids.map((requestId, i) =>
        mine.settleJobs({ jobs: [{ jobId: jobs[i]!, images: 1, pixels: 4, unitsEstimate: '1', upstreamCostMicros: BigInt(100 + i) }], settle: { requestId, chargeMicros: BigInt(i), credits: 1, images: 1 } }),
      ),
    );
    assert.deepEqual(
      settled.map((s) => [s.settlement.settled, s.jobs[0]?.changed, s.jobs[0]?.job.upstreamCostMicros]),
      ids.map((_, i) => [i < 19, true, BigInt(100 + i)]),
    );
    for (const [i, requestId] of ids.entries()) {
      const row = await mine.getRequest(requestId);
      assert.deepEqual([row?.status, row?.chargeMicros, row?.upstreamCostMicros, row?.jobs[0]?.inputHash, row?.jobs[0]?.estimateMicros], i < 19 ? ['settled', BigInt(i), BigInt(100 + i), `h${i}`, BigInt(i)] : ['reserved', 0n, 119n, 'h19', 19n]);
    }
    // Each kind: the first write alone, the nineteen that queued behind it in one statement. The
    // takeover's row is not settled by the statement; its settle then runs as a transaction elsewhere.
    if (ctx.dialect === 'postgres') assert.equal(statements() - before, 6);
  });

  it('answers each caller of a batch with its own outcome: a label taken in the same batch, an id used before, a submit repeated', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const used = uid('req');
    await ledger.reserve({ ...reserveInput(keyId, 1n, used), jobs: 1 });
    const [a, b, c, d] = [uid('req'), uid('req'), uid('req'), uid('req')];
    const outs = await Promise.all([
      ledger.reserve({ ...reserveInput(keyId, 1n, a), jobs: 1 }),
      ledger.reserve({ ...reserveInput(keyId, 1n, b), clientRequestId: 'twice', jobs: 1 }),
      ledger.reserve({ ...reserveInput(keyId, 1n, c), clientRequestId: 'twice', jobs: 1 }),
      ledger.reserve({ ...reserveInput(keyId, 1n, used), jobs: 1 }).catch((e: Error) => e),
      ledger.reserve({ ...reserveInput(keyId, 1n, d), jobs: 2 }),
    ]);
    assert.deepEqual(outs[0], { ok: true });
    assert.deepEqual(outs[4], { ok: true });
    assert.ok(outs[3] instanceof Error, 'an id used before fails its own reservation');
    assert.deepEqual([outs[1], outs[2]].map((o) => JSON.stringify(o)).sort(), [JSON.stringify({ ok: false, reason: 'request_id_taken' }), JSON.stringify({ ok: true })]);
    const loser = (outs[1] as { ok: boolean }).ok ? c : b;
    assert.equal(await ledger.getRequest(loser), null);
    assert.equal((await ledger.getRequest(d))?.jobs.length, 2);
    const fal = uid('fal');
    const twice = await Promise.all([ledger.recordSubmit({ jobId: jobIdFor(a, 0), falRequestId: fal }), ledger.recordSubmit({ jobId: jobIdFor(a, 0), falRequestId: fal })]);
    assert.deepEqual(twice.map((j) => [j.falRequestId, j.status]), [[fal, 'submitted'], [fal, 'submitted']]);
  });

  it('answers the first of two reservations of one request id with its own commit, the second with its error', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const [first, twice] = [uid('req'), uid('req')];
    // On PostgreSQL the first leaves alone and the two of `twice` queue behind it, together.
    const outs = await Promise.all([
      ledger.reserve({ ...reserveInput(keyId, 1n, first), jobs: 1 }),
      ledger.reserve({ ...reserveInput(keyId, 1n, twice), jobs: 1 }).catch((e: Error) => e),
      ledger.reserve({ ...reserveInput(keyId, 2n, twice), jobs: 1 }).catch((e: Error) => e),
    ]);
    assert.deepEqual(outs.slice(0, 2), [{ ok: true }, { ok: true }]);
    assert.ok(outs[2] instanceof Error, 'the id was used: the second reservation fails');
    const row = await ledger.getRequest(twice);
    assert.deepEqual([row?.status, row?.reservedMicros, row?.jobs.length], ['reserved', 1n, 1]);
  });

  it('answers each settle of a batch with its own outcome when another caller\'s read after the commit fails', async () => {
    const database = await ctx.open();
    const ledger = createLedger(database);
    const keyId = await keyWithBudget(database, null);
    const ids = [uid('req'), uid('req'), uid('req')];
    for (const id of ids) await ledger.reserve({ ...reserveInput(keyId, 100n, id), jobs: 1 });
    const job = (jobId: string) => ({ jobId, images: 1, pixels: 1, unitsEstimate: '1', upstreamCostMicros: 5n });
    const settle = (requestId: string, jobId: string) => ledger.settleJobs({ jobs: [job(jobId)], settle: { requestId, chargeMicros: 9n, credits: 1, images: 1 } });
    // The last names a job no ledger holds: its own settle fails; the one in its batch does not.
    const outs = await Promise.all([settle(ids[0]!, jobIdFor(ids[0]!, 0)), settle(ids[1]!, jobIdFor(ids[1]!, 0)), settle(ids[2]!, uid('job')).catch((e: Error) => e)]);
    assert.deepEqual(
      outs.slice(0, 2).map((o) => ('settlement' in o ? [o.settlement.settled, o.jobs[0]?.changed] : o)),
      [
        [true, true],
        [true, true],
      ],
    );
    assert.equal((outs[2] as Error).name, 'UnknownJobError');
    assert.equal((await ledger.getRequest(ids[1]!))?.status, 'settled');
  });

  if (ctx.dialect === 'postgres') {
    it('plans every grouped write through primary keys, on empty tables and on full ones, analyzed or not, on connections that keep one plan', async () => {
      const storage = await ctx.fresh();
      const database = await storage.open();
      const show = await database.writes!.executeQuery<{ plan_cache_mode: string; enable_seqscan: string }>(
        CompiledQuery.raw("select current_setting('plan_cache_mode') as plan_cache_mode, current_setting('enable_seqscan') as enable_seqscan"),
      );
      assert.deepEqual(show.rows[0], { plan_cache_mode: 'force_generic_plan', enable_seqscan: 'off' });
      // A new database: its plans are made on empty tables and kept while they fill.
      assert.deepEqual(await tableScans(database), [], 'empty');
      // Its first rows, as a minute of traffic leaves them: never analyzed (no autovacuum here), then analyzed.
      // Every job has left (none `submitting`): a plan may not read the few that have not through a status index.
      const ledger = createLedger(database);
      const keyId = await keyWithBudget(database, null);
      const ids = Array.from({ length: 3000 }, () => uid('req'));
      await Promise.all(ids.map((id) => ledger.reserve({ ...reserveInput(keyId, 1n, id), jobs: 1 })));
      await Promise.all(ids.map((id) => ledger.recordSubmit({ jobId: jobIdFor(id, 0), falRequestId: uid('fal') })));
      for (const analyzed of [false, true]) {
        if (analyzed) await database.db.executeQuery(CompiledQuery.raw('analyze requests, upstream_jobs, api_keys, budget_slices'));
        assert.deepEqual(await tableScans(database), [], analyzed ? 'analyzed' : 'never analyzed');
      }
    });
  }
});

/**
 * The grouped writes' generic plans, each prepared anew on a connection of
 * its own: `statement: table` for every table one scans, and `statement:
 * index` for every index it reads other than a key's (a status index reads
 * every row in that status).
 */
async function tableScans(database: Database): Promise<string[]> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    await client.query(`set search_path = "${database.schema}"; ${GROUPED_WRITE_SETTINGS}`);
    const scans: string[] = [];
    for (const [name, statement] of Object.entries(pgStatements('lease-x'))) {
      const text = statement.text(database.db);
      const count = Math.max(...[...text.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
      await client.query(`prepare ${name} as ${text}`);
      const { rows } = await client.query(`explain (format json) execute ${name}(${Array(count).fill('null').join(', ')})`);
      await client.query(`deallocate ${name}`);
      for (const m of JSON.stringify(rows[0]['QUERY PLAN']).matchAll(/"Node Type":"Seq Scan"[^}]*?"Relation Name":"(\w+)"/g)) {
        scans.push(`${name}: ${m[1]}`);
      }
      for (const m of JSON.stringify(rows[0]['QUERY PLAN']).matchAll(/"Index Name":"(\w+)"/g)) {
        if (!m[1]!.endsWith('_pkey') && m[1] !== 'upstream_jobs_request') scans.push(`${name}: ${m[1]}`);
      }
    }
    return scans;
  } finally {
    await client.end();
  }
}

/** The database with a count of the statements its grouped writes ran. */
function counted(database: Database): { database: Database; statements: () => number } {
  let n = 0;
  const plugin: KyselyPlugin = {
    transformQuery: (args) => args.node,
    transformResult: async (args) => {
      n++;
      return args.result;
    },
  };
  return { database: database.writes ? { ...database, writes: database.writes.withPlugin(plugin) } : database, statements: () => n };
}
