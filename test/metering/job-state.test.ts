import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decideRequest, nextJobState, provesJobFailed, type FalFailure, type JobEvent, type JobState } from '../../src/metering/job-state.js';

/** The billing decisions as data: no fal, no ledger, no clock. */

const fail = (phase: string, kind: FalFailure['kind'], status?: number, ambiguous = false): FalFailure => ({ phase, kind, status, ambiguous });
type R = { images: number };
const submitted: JobState<R> = { at: 'submitted', falRequestId: 'f1' };

describe('nextJobState: what fal said → the next state and its ledger write', () => {
  const cases: Array<[string, JobState<R>, JobEvent<R>, JobState<R>['at'], unknown]> = [
    ['submit answered: record the job', { at: 'new' }, { type: 'submitted', falRequestId: 'f1' }, 'submitted', { write: 'record_submit', falRequestId: 'f1' }],
    ['submit refused (429): no job', { at: 'new' }, { type: 'submit_failed', error: fail('submit', 'http', 429) }, 'refused', undefined],
    ['submit without an answer: a job may exist', { at: 'new' }, { type: 'submit_failed', error: fail('submit', 'network', undefined, true) }, 'unknown', undefined],
    ['the ledger could not record the job', submitted, { type: 'record_failed', error: fail('submit', 'aborted') }, 'unrecorded', undefined],
    ['result in hand', submitted, { type: 'result', result: { images: 1 } }, 'completed', undefined],
    ['result answered 422: the job failed, closed unbilled', submitted, { type: 'wait_failed', error: fail('result', 'http', 422) }, 'failed', { write: 'close_job', falRequestId: 'f1', status: 'failed' }],
    ['result answered 500: proves nothing, left open', submitted, { type: 'wait_failed', error: fail('result', 'http', 500) }, 'open', undefined],
    ['status unreachable: left open', submitted, { type: 'wait_failed', error: fail('status', 'network') }, 'open', undefined],
    ['cancelled, then fal proved it ended unrun', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { cancelled: true } }, 'cancelled', { write: 'close_job', falRequestId: 'f1', status: 'cancelled' }],
    ['cancel came too late: fal completed it, collected', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { result: { images: 1 } } }, 'completed', undefined],
    ['cancel outcome unknown: left open', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { unknown: true } }, 'open', undefined],
  ];
  for (const [name, from, event, at, write] of cases) {
    it(name, () => {
      const t = nextJobState(from, event);
      assert.equal(t.state.at, at);
      assert.deepEqual(t.write, write);
    });
  }

  it('an event out of order is a bug, not a state', () => {
    assert.throws(() => nextJobState<R, FalFailure>({ at: 'new' }, { type: 'result', result: { images: 1 } }), /job event result in state new/);
    assert.throws(() => nextJobState<R, FalFailure>(submitted, { type: 'submitted', falRequestId: 'f2' }), /in state submitted/);
  });

  it('only a 4xx result (not 429) proves the job failed', () => {
    assert.equal(provesJobFailed(fail('result', 'http', 404)), true);
    assert.equal(provesJobFailed(fail('result', 'http', 429)), false);
    assert.equal(provesJobFailed(fail('status', 'http', 404)), false);
    assert.equal(provesJobFailed(fail('result', 'bad_response', 400)), false);
  });
});

describe('decideRequest: the jobs’ states → the request row and the caller’s answer', () => {
  const completed = (id: string): JobState<R> => ({ at: 'completed', falRequestId: id, result: { images: 1 } });
  const refused: JobState<R> = { at: 'refused', error: fail('submit', 'http', 422) };
  const unknown: JobState<R> = { at: 'unknown', error: fail('submit', 'network', undefined, true) };
  const open: JobState<R> = { at: 'open', falRequestId: 'f9', error: fail('status', 'network') };
  const failed: JobState<R> = { at: 'failed', falRequestId: 'f8', error: fail('result', 'http', 422) };
  const cancelled: JobState<R> = { at: 'cancelled', falRequestId: 'f7', error: fail('status', 'aborted') };

  it('every job completed: settle and answer with images', () => {
    const d = decideRequest([completed('a'), completed('b')], undefined);
    assert.deepEqual(d.ledger, { write: 'settle' });
    assert.deepEqual(d.caller, { answer: 'images' });
    assert.equal(d.completed.length, 2);
  });

  it('refused at submit: released as failed, and a retry is safe', () => {
    const d = decideRequest([refused], undefined);
    assert.deepEqual(d.ledger, { write: 'release', status: 'failed', errorCode: 'submit_422' });
    assert.equal(d.caller.answer === 'error' && d.caller.retrySafe, true);
  });

  it('stopped by the deadline with every job closed: released under that reason, no retry invited once a job existed', () => {
    const d = decideRequest([cancelled], 'deadline');
    assert.deepEqual(d.ledger, { write: 'release', status: 'released', errorCode: 'deadline' });
    assert.equal(d.caller.answer === 'error' && d.caller.retrySafe, false);
  });

  it('one job completed, one failed: the completed one is settled; the root cause is the answer, not the sibling we cut', () => {
    const d = decideRequest([completed('a'), cancelled, failed], undefined);
    assert.deepEqual(d.ledger, { write: 'settle' });
    assert.equal(d.caller.answer, 'error');
    assert.equal(d.caller.answer === 'error' && d.caller.error.status, 422);
    assert.deepEqual(d.completed, [{ images: 1 }]);
  });

  it('a submit outcome unknown for every job: the request is orphaned', () => {
    assert.deepEqual(decideRequest([unknown, unknown], undefined).ledger, { write: 'orphan' });
  });

  it('a job open: nothing is written, reconciliation settles it later', () => {
    assert.deepEqual(decideRequest([completed('a'), open], undefined).ledger, { write: 'none' });
    assert.deepEqual(decideRequest([unknown, failed], undefined).ledger, { write: 'none' });
  });

  it('a job the ledger could not record: metering unavailable, nothing else written', () => {
    const d = decideRequest([completed('a'), { at: 'unrecorded', falRequestId: 'x', error: fail('submit', 'aborted') }], undefined);
    assert.deepEqual(d.caller, { answer: 'metering_unavailable' });
    assert.deepEqual(d.ledger, { write: 'none' });
  });

  it('a request decided with a job still waiting is a bug', () => {
    assert.throws(() => decideRequest([submitted], undefined), /still submitted/);
  });
});
