/**
 * fal's Platform API request listing (`GET api.fal.ai/v1/models/requests/by-endpoint`),
 * what a gateway uses to find a request whose submit answer was lost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Emulator } from '../../src/emulator/index.js';
import { decodeCursor, encodeCursor, parseIsoDate } from '../../src/emulator/platform-routes.js';
import { appOf, emulator, LORA, raw, rawSubmit, TURBO, waitFor } from './helpers.js';

const LIST = 'api.fal.ai/v1/models/requests/by-endpoint';

function list(emu: Emulator, query: Record<string, string>, key?: string | null) {
  return raw(emu, 'GET', `${LIST}?${new URLSearchParams(query)}`, key === undefined ? {} : { key });
}

const iso = (ms: number) => new Date(ms).toISOString();

async function completed(emu: Emulator, id: string) {
  return waitFor(() => (emu.job(id)?.status === 'COMPLETED' ? emu.job(id) : undefined));
}

/** Submits and waits until the emulator's clock has moved past the job's submit time. */
async function submitAndTick(emu: Emulator, endpoint: string, input: Record<string, unknown>): Promise<string> {
  const id = await rawSubmit(emu, endpoint, input);
  const at = emu.job(id)!.submitted_at;
  await waitFor(() => Date.now() > at || undefined);
  return id;
}

test('a completed job is listed with its input and output (expand=payloads), fal.run jobs too, other endpoints not', async (t) => {
  const emu = await emulator(t);
  const input = { prompt: 'listed one', image_size: 'square', seed: 3, extra_field: 'kept as sent' };
  const queued = await rawSubmit(emu, TURBO, input);
  const run = await raw(emu, 'POST', `fal.run/${TURBO}`, { body: { prompt: 'listed run' } });
  assert.equal(run.status, 200);
  const runId = run.headers.get('x-fal-request-id')!;
  const other = await rawSubmit(emu, LORA, { prompt: 'other endpoint' });
  const job = await completed(emu, queued);
  await completed(emu, other);

  const r = await list(emu, { endpoint_id: TURBO, expand: 'payloads' });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.has_more, false);
  assert.equal(r.json.next_cursor, null);
  const ids = r.json.items.map((i: any) => i.request_id);
  assert.deepEqual(new Set(ids), new Set([queued, runId]));
  const item = r.json.items.find((i: any) => i.request_id === queued);
  const result = await raw(emu, 'GET', `queue.fal.run/${appOf(TURBO)}/requests/${queued}`);
  assert.deepEqual(item, {
    request_id: queued,
    endpoint_id: TURBO,
    sent_at: iso(job.submitted_at),
    started_at: iso(job.started_at!),
    ended_at: iso(job.completed_at!),
    status_code: 200,
    duration: (job.completed_at! - job.submitted_at) / 1000,
    json_input: input,
    json_output: result.json,
  });
  const runItem = r.json.items.find((i: any) => i.request_id === runId);
  assert.deepEqual(runItem.json_input, { prompt: 'listed run' });
  assert.equal(runItem.json_output.prompt, 'listed run');

  // Payloads only when asked for, as fal documents.
  const bare = await list(emu, { endpoint_id: TURBO });
  for (const i of bare.json.items) {
    assert.ok(!('json_input' in i) && !('json_output' in i));
    assert.equal(i.status_code, 200);
  }
  const lora = await list(emu, { endpoint_id: LORA });
  assert.deepEqual(lora.json.items.map((i: any) => i.request_id), [other]);
  assert.deepEqual((await list(emu, { endpoint_id: 'fal-ai/flux/dev' })).json, { items: [], next_cursor: null, has_more: false });
});

test('a job submitted with X-Fal-Store-IO: 0 is listed without its payloads; "1" or no header keeps them', async (t) => {
  const emu = await emulator(t);
  const submit = async (prompt: string, storeIo?: string) => {
    const r = await raw(emu, 'POST', `queue.fal.run/${TURBO}`, { body: { prompt }, ...(storeIo === undefined ? {} : { headers: { 'x-fal-store-io': storeIo } }) });
    assert.equal(r.status, 200, r.text);
    return completed(emu, r.json.request_id as string);
  };
  const hidden = await submit('not stored', '0');
  const kept = await submit('stored', '1');
  const plain = await submit('stored by default');
  assert.equal(hidden!.store_io, false, 'the emulator records the header');
  assert.equal(kept!.store_io, undefined);
  const items = (await list(emu, { endpoint_id: TURBO, expand: 'payloads' })).json.items as any[];
  const byId = (id: string) => items.find((i) => i.request_id === id);
  assert.deepEqual([byId(hidden!.request_id).json_input, byId(hidden!.request_id).json_output], [null, null]);
  assert.equal(byId(hidden!.request_id).status_code, 200, 'the request itself is still listed');
  assert.deepEqual(byId(kept!.request_id).json_input, { prompt: 'stored' });
  assert.deepEqual(byId(plain!.request_id).json_input, { prompt: 'stored by default' });
  assert.equal(byId(plain!.request_id).json_output.prompt, 'stored by default');
});

test('the start/end window is by sent_at, start inclusive, end exclusive; dates and offsets parse', async (t) => {
  const emu = await emulator(t);
  const a = await submitAndTick(emu, TURBO, { prompt: 'early' });
  const b = await submitAndTick(emu, TURBO, { prompt: 'late' });
  const bAt = emu.job(b)!.submitted_at;
  const ids = async (q: Record<string, string>) => {
    const r = await list(emu, { endpoint_id: TURBO, ...q });
    assert.equal(r.status, 200, r.text);
    return r.json.items.map((i: any) => i.request_id).sort();
  };
  assert.deepEqual(await ids({}), [a, b].sort());
  assert.deepEqual(await ids({ start: iso(bAt) }), [b]);
  assert.deepEqual(await ids({ end: iso(bAt) }), [a]);
  // The same instant written with a +02:00 offset.
  const plus2 = new Date(bAt + 2 * 3600_000).toISOString().replace('Z', '+02:00');
  assert.deepEqual(await ids({ start: plus2 }), [b]);
  assert.deepEqual(await ids({ start: iso(Date.now() + 3600_000) }), []);
  assert.deepEqual(await ids({ start: '2000-01-01' }), [a, b].sort());
  assert.deepEqual(await ids({ start: '2000-01-01', end: '2000-01-02' }), []);
});

test('pagination with limit=1 walks every item once, with has_more and base64 page cursors', async (t) => {
  const emu = await emulator(t);
  const submitted = [];
  for (const p of ['one', 'two', 'three']) submitted.push(await rawSubmit(emu, TURBO, { prompt: p }));
  for (const id of submitted) await completed(emu, id);

  const seen: any[] = [];
  let cursor: string | null = null;
  for (let page = 1; page <= 3; page++) {
    const r = await list(emu, { endpoint_id: TURBO, limit: '1', ...(cursor ? { cursor } : {}) });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.items.length, 1);
    seen.push(r.json.items[0]);
    assert.equal(r.json.has_more, page < 3);
    cursor = r.json.next_cursor;
    if (page < 3) assert.equal(cursor, Buffer.from(String(page + 1)).toString('base64'));
    else assert.equal(cursor, null);
  }
  assert.equal(seen.length, 3);
  assert.deepEqual(new Set(seen.map((i) => i.request_id)), new Set(submitted));
  assert.equal(seen[0].request_id !== seen[1].request_id && seen[1].request_id !== seen[2].request_id, true);
  // Sorted by end time, newest first (fal's default sort_by=ended_at).
  for (let i = 1; i < seen.length; i++) assert.ok(Date.parse(seen[i - 1].ended_at) >= Date.parse(seen[i].ended_at));
  // fal's own example cursor is page 2.
  const two = await list(emu, { endpoint_id: TURBO, limit: '2', cursor: 'Mg==' });
  assert.equal(two.json.items.length, 1);
  assert.equal(two.json.has_more, false);
  const past = await list(emu, { endpoint_id: TURBO, limit: '2', cursor: encodeCursor(9) });
  assert.deepEqual(past.json, { items: [], next_cursor: null, has_more: false });
});

test('a failed job shows its status code and error body; the status filter sorts success, error and user_error', async (t) => {
  const emu = await emulator(t);
  emu.armFault({ kind: 'fail_after_start', status: 500, detail: 'CUDA out of memory', prompt_contains: 'boom' });
  emu.armFault({ kind: 'fail_after_start', status: 422, prompt_contains: 'refused' });
  const failed = await rawSubmit(emu, TURBO, { prompt: 'boom' });
  const refused = await rawSubmit(emu, TURBO, { prompt: 'refused' });
  const fine = await rawSubmit(emu, TURBO, { prompt: 'fine' });
  for (const id of [failed, refused, fine]) await completed(emu, id);

  const r = await list(emu, { endpoint_id: TURBO, expand: 'payloads' });
  const byId = new Map(r.json.items.map((i: any) => [i.request_id, i]));
  const f = byId.get(failed) as any;
  assert.equal(f.status_code, 500);
  assert.deepEqual(f.json_output, { detail: 'CUDA out of memory' });
  assert.deepEqual(f.json_input, { prompt: 'boom' });
  assert.equal((byId.get(refused) as any).status_code, 422);
  const only = async (status: string) =>
    (await list(emu, { endpoint_id: TURBO, status })).json.items.map((i: any) => i.request_id);
  assert.deepEqual(await only('success'), [fine]);
  assert.deepEqual(await only('error'), [failed]);
  assert.deepEqual(await only('user_error'), [refused]);
});

test('an unfinished job is listed first with null end, status and duration; request_id filters', async (t) => {
  const emu = await emulator(t);
  const done = await rawSubmit(emu, TURBO, { prompt: 'done' });
  await completed(emu, done);
  emu.armFault({ kind: 'never_finish', prompt_contains: 'forever' });
  const running = await rawSubmit(emu, TURBO, { prompt: 'forever' });
  const r = await list(emu, { endpoint_id: TURBO, expand: 'payloads' });
  assert.deepEqual(r.json.items.map((i: any) => i.request_id), [running, done]);
  const item = r.json.items[0];
  assert.equal(item.ended_at, null);
  assert.equal(item.status_code, null);
  assert.equal(item.duration, null);
  assert.equal(item.json_output, null);
  assert.deepEqual(item.json_input, { prompt: 'forever' });
  assert.deepEqual((await list(emu, { endpoint_id: TURBO, status: 'success' })).json.items.map((i: any) => i.request_id), [done]);
  const one = await list(emu, { endpoint_id: TURBO, request_id: running });
  assert.deepEqual(one.json.items.map((i: any) => i.request_id), [running]);
  assert.ok(emu.finishJob(running));
  const after = await list(emu, { endpoint_id: TURBO, request_id: running });
  assert.equal(after.json.items[0].status_code, 200);
});

test('auth: no key 401, a wrong configured key 401', async (t) => {
  const emu = await emulator(t);
  const none = await list(emu, { endpoint_id: TURBO }, null);
  assert.equal(none.status, 401);
  assert.equal(typeof none.json.detail, 'string');
  const keyed = await emulator(t, { emulatorKey: 'sekret' });
  assert.equal((await list(keyed, { endpoint_id: TURBO }, 'wrong')).status, 401);
  assert.equal((await list(keyed, { endpoint_id: TURBO }, 'sekret')).status, 200);
});

test('bad queries are 422 with every problem named by its parameter', async (t) => {
  const emu = await emulator(t);
  const locs = async (q: Record<string, string>) => {
    const r = await list(emu, q);
    assert.equal(r.status, 422, `${JSON.stringify(q)}: ${r.text}`);
    return r.json.detail.map((d: any) => d.loc.join('.'));
  };
  assert.deepEqual(await locs({}), ['query.endpoint_id']);
  assert.deepEqual(await locs({ endpoint_id: '' }), ['query.endpoint_id']);
  for (const bad of ['2025-02-30', 'yesterday', '2025-1-1', '2025-01-01T25:00:00Z', '2025-01-01T00:00:00+24:00', '1735689600']) {
    assert.deepEqual(await locs({ endpoint_id: TURBO, start: bad }), ['query.start'], bad);
  }
  assert.deepEqual(await locs({ start: 'x', end: 'y' }), ['query.endpoint_id', 'query.start', 'query.end']);
  for (const bad of ['0', '101', 'ten', '1.5']) assert.deepEqual(await locs({ endpoint_id: TURBO, limit: bad }), ['query.limit'], bad);
  for (const bad of ['zzz', 'YWJj', 'MA==', 'Mg']) assert.deepEqual(await locs({ endpoint_id: TURBO, cursor: bad }), ['query.cursor'], bad);
  assert.deepEqual(await locs({ endpoint_id: TURBO, status: 'ok' }), ['query.status']);
  assert.deepEqual(await locs({ endpoint_id: TURBO, sort_by: 'sent_at' }), ['query.sort_by']);
  assert.deepEqual(await locs({ endpoint_id: TURBO, expand: 'payloads,billing' }), ['query.expand']);
});

test('other api.fal.ai paths are 404, other methods 405; calls are counted as platform', async (t) => {
  const emu = await emulator(t);
  assert.equal((await raw(emu, 'GET', 'api.fal.ai/v1/models')).status, 404);
  assert.equal((await raw(emu, 'POST', `${LIST}?endpoint_id=${TURBO}`, { body: {} })).status, 405);
  assert.equal(emu.stats().platform, 2);
});

test('date and cursor parsing', () => {
  assert.equal(parseIsoDate('2025-01-01'), Date.UTC(2025, 0, 1));
  assert.equal(parseIsoDate('2025-01-01T00:00:00Z'), Date.UTC(2025, 0, 1));
  assert.equal(parseIsoDate('2025-01-31T23:59:59.5Z'), Date.UTC(2025, 0, 31, 23, 59, 59, 500));
  assert.equal(parseIsoDate('2025-01-01T02:00:00+02:00'), Date.UTC(2025, 0, 1));
  assert.equal(parseIsoDate('2025-01-01T00:00:00-0130'), Date.UTC(2025, 0, 1, 1, 30));
  assert.equal(parseIsoDate('2025-01-01T12:30'), Date.UTC(2025, 0, 1, 12, 30));
  assert.equal(parseIsoDate('2024-02-29'), Date.UTC(2024, 1, 29));
  for (const bad of ['2023-02-29', '2025-13-01', '2025-01-01T00:60:00Z', 'Mon, 01 Jan 2025', '', '2025-01-01Z']) {
    assert.equal(parseIsoDate(bad), undefined, bad);
  }
  assert.equal(encodeCursor(2), 'Mg==');
  assert.equal(decodeCursor('Mg=='), 2);
  assert.equal(decodeCursor(encodeCursor(123)), 123);
  assert.equal(decodeCursor('MA=='), undefined);
});
