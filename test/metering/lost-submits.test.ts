import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalJson, CLOCK_SKEW_MS, groupByWindow, inputHash, judgeLostSubmit, submitWindow, type ListedInput, type LostSubmitVerdict } from '../../src/metering/lost-submits.js';

const T0 = Date.parse('2026-01-01T12:00:00Z');
const TIMEOUT = 60_000;
const input = { prompt: 'a fox', num_images: 2, image_size: { width: 512, height: 512 }, sync_mode: false, seed: 7 };
const H = inputHash(input);
const window = submitWindow(T0, TIMEOUT);
const closed = window.end + 1;

describe('inputHash', () => {
  it('is the same whatever the key order, at every level', () => {
    const reordered = { seed: 7, sync_mode: false, image_size: { height: 512, width: 512 }, num_images: 2, prompt: 'a fox' };
    assert.equal(inputHash(reordered), H);
    assert.equal(canonicalJson(reordered), '{"image_size":{"height":512,"width":512},"num_images":2,"prompt":"a fox","seed":7,"sync_mode":false}');
  });

  it('is the same after a JSON round trip (what fal stores is the body it received)', () => {
    assert.equal(inputHash(JSON.parse(JSON.stringify(input))), H);
  });

  it('differs when any value differs', () => {
    for (const other of [{ ...input, seed: 8 }, { ...input, prompt: 'a fox ' }, { ...input, num_images: '2' }, { ...input, image_size: { width: 512, height: 513 } }, { ...input, extra: null }]) {
      assert.notEqual(inputHash(other), H, JSON.stringify(other));
    }
  });

  it('drops undefined fields as JSON does', () => {
    assert.equal(inputHash({ ...input, loras: undefined }), H);
  });
});

describe('judgeLostSubmit', () => {
  const job = { inputHash: H, createdAtMs: T0 };
  const item = (requestId: string, sentAtMs: number | null, hash: string | null = H): ListedInput => ({ requestId, sentAtMs, inputHash: hash });
  const none = new Set<string>();

  const cases: Array<{ name: string; items: ListedInput[]; taken?: Set<string>; now?: number; job?: typeof job; want: LostSubmitVerdict }> = [
    { name: 'a request with the same input in the window is the job', items: [item('other', T0 + 100, inputHash({ prompt: 'x' })), item('fal-1', T0 + 200)], want: { kind: 'found', falRequestId: 'fal-1' } },
    { name: 'found even while the window is open', items: [item('fal-1', T0 + 200)], now: T0 + 1000, want: { kind: 'found', falRequestId: 'fal-1' } },
    { name: 'an id the ledger already holds is not the job', items: [item('fal-1', T0 + 200)], taken: new Set(['fal-1']), want: { kind: 'absent' } },
    { name: 'of two matches, the one not yet held', items: [item('fal-1', T0 + 100), item('fal-2', T0 + 300)], taken: new Set(['fal-1']), want: { kind: 'found', falRequestId: 'fal-2' } },
    { name: 'of two free matches, the one nearest the row', items: [item('far', T0 + 50_000), item('near', T0 + 300)], want: { kind: 'found', falRequestId: 'near' } },
    { name: 'before the window (more than the clock skew early) is not the job', items: [item('early', T0 - CLOCK_SKEW_MS - 1)], want: { kind: 'absent' } },
    { name: 'after the window (past the submit timeout and skew) is not the job', items: [item('late', window.end)], want: { kind: 'absent' } },
    { name: 'at the window’s start is in it', items: [item('edge', window.start)], want: { kind: 'found', falRequestId: 'edge' } },
    { name: 'nothing listed, window closed: absent', items: [], want: { kind: 'absent' } },
    { name: 'nothing listed, window open: pending', items: [], now: window.end - 1, want: { kind: 'pending' } },
    { name: 'a request whose input fal did not store: cannot tell', items: [item('hidden', T0 + 100, null)], want: { kind: 'unmatchable', unreadable: 1 } },
    { name: 'an unstored input whose id the ledger holds does not stop the verdict', items: [item('hidden', T0 + 100, null)], taken: new Set(['hidden']), want: { kind: 'absent' } },
    { name: 'a row with no hash cannot be matched', items: [item('fal-1', T0 + 100)], job: { inputHash: null, createdAtMs: T0 } as unknown as typeof job, want: { kind: 'unmatchable', unreadable: 0 } },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(judgeLostSubmit(c.job ?? job, c.items, c.taken ?? none, window, c.now ?? closed), c.want);
    });
  }
});

describe('submitWindow and groupByWindow', () => {
  it('the window runs from the clock skew before the row to the submit timeout and skew after it', () => {
    assert.deepEqual(submitWindow(T0, TIMEOUT), { start: T0 - CLOCK_SKEW_MS, end: T0 + TIMEOUT + CLOCK_SKEW_MS });
  });

  it('a dead owner sent nothing after its lease expired: the window ends there (and the skew after it)', () => {
    assert.deepEqual(submitWindow(T0, TIMEOUT, T0 + 8_000), { start: T0 - CLOCK_SKEW_MS, end: T0 + 8_000 + CLOCK_SKEW_MS });
    assert.deepEqual(submitWindow(T0, TIMEOUT, T0 + TIMEOUT + 30_000), submitWindow(T0, TIMEOUT), 'an expiry after the submit timeout changes nothing');
    assert.deepEqual(submitWindow(T0, TIMEOUT, T0 - 1_000), { start: T0 - CLOCK_SKEW_MS, end: T0 + CLOCK_SKEW_MS }, 'never before the row');
  });

  it('one listing per endpoint and overlapping windows', () => {
    const j = (id: string, endpoint: string, at: number) => ({ id, endpoint, window: submitWindow(at, TIMEOUT) });
    const groups = groupByWindow([j('a', 'e1', T0), j('b', 'e1', T0 + 30_000), j('c', 'e1', T0 + 3_600_000), j('d', 'e2', T0)]);
    assert.deepEqual(
      groups.map((g) => [g.endpoint, g.jobs.map((x) => x.id), g.window]),
      [
        ['e1', ['a', 'b'], { start: T0 - CLOCK_SKEW_MS, end: T0 + 30_000 + TIMEOUT + CLOCK_SKEW_MS }],
        ['e1', ['c'], submitWindow(T0 + 3_600_000, TIMEOUT)],
        ['e2', ['d'], submitWindow(T0, TIMEOUT)],
      ],
    );
  });
});
