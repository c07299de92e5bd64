import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { afterLook, decideReconciled, decideRequest, nextJobState, type Ended, type FalFailure, type FalLook, type JobEvent, type JobState, type LookContext, type ReconciledJob, type StopReason } from '../../src/metering/job-state.js';

/**
 * The billing decisions as data: no fal, no ledger, no clock. One row per
 * case issue 16 names and per real-fal behaviour (REFERENCE §3b).
 */

const fail = (phase: string, kind: FalFailure['kind'], status?: number, ambiguous = false, falRequestId?: string): FalFailure => ({ phase, kind, status, ambiguous, falRequestId });
type R = { images: number };
const submitting: JobState<R> = { at: 'submitting' };
const submitted: JobState<R> = { at: 'submitted', falRequestId: 'f1' };
const ended = (how: Ended['how'], billedUnits: string | null, errorType?: string): Ended => ({ how, billedUnits, errorType });

describe('nextJobState: what fal said → the next state and its ledger write', () => {
  const cases: Array<[string, JobState<R>, JobEvent<R>, JobState<R>['at'], unknown]> = [
    ['submit answered: fal’s id is added to the job’s row', submitting, { type: 'submitted', falRequestId: 'f1' }, 'submitted', { write: 'record_submit', falRequestId: 'f1' }],
    ['submit refused (429): no job, closed at $0', submitting, { type: 'submit_failed', error: fail('submit', 'http', 429) }, 'refused', { write: 'close_job', status: 'refused', billedUnits: '0', errorCode: 'submit_429' }],
    ['submit refused (422 on submit, fal validated early): no job', submitting, { type: 'submit_failed', error: fail('submit', 'http', 422) }, 'refused', { write: 'close_job', status: 'refused', billedUnits: '0', errorCode: 'submit_422' }],
    ['submit connection lost after sending, no id: a job may exist, the row stays submitting', submitting, { type: 'submit_failed', error: fail('submit', 'network', undefined, true) }, 'unknown', undefined],
    ['submit answered 500 naming an id: that id may be the job, recorded for reconciliation', submitting, { type: 'submit_failed', error: fail('submit', 'http', 500, true, 'f5') }, 'unknown', { write: 'record_submit', falRequestId: 'f5' }],
    ['the ledger could not record the job', submitted, { type: 'record_failed', error: fail('submit', 'aborted') }, 'unrecorded', undefined],
    ['result in hand', submitted, { type: 'result', result: { images: 1 } }, 'completed', undefined],
    ['validated late: the job ended 422 and fal billed it (x-fal-billable-units 1)', submitted, { type: 'wait_failed', error: fail('result', 'http', 422), ended: ended('failed', '1', 'validation_error') }, 'failed', { write: 'close_job', status: 'failed', billedUnits: '1', errorCode: 'validation_error' }],
    ['content policy: a billed failure', submitted, { type: 'wait_failed', error: fail('result', 'http', 422), ended: ended('failed', '1', 'content_policy_violation') }, 'failed', { write: 'close_job', status: 'failed', billedUnits: '1', errorCode: 'content_policy_violation' }],
    ['the job failed 500 after it started: fal ended it, billed nothing', submitted, { type: 'wait_failed', error: fail('result', 'http', 500), ended: ended('failed', '0', 'internal_server_error') }, 'failed', { write: 'close_job', status: 'failed', billedUnits: '0', errorCode: 'internal_server_error' }],
    ['fal completed and billed the job but its images cannot be sized: closed at fal’s units, priced as a completed job', submitted, { type: 'wait_failed', error: fail('result', 'bad_response', 200), ended: { how: 'failed', billedUnits: '1', errorType: 'unreadable_output', completedAtFal: true } }, 'failed', { write: 'close_job', status: 'failed', billedUnits: '1', errorCode: 'unreadable_output', completedAtFal: true }],
    ['result answered 404/403 for a job fal calls completed without error: proves nothing, left open', submitted, { type: 'wait_failed', error: fail('result', 'http', 404) }, 'open', undefined],
    ['status unreachable: left open', submitted, { type: 'wait_failed', error: fail('status', 'network') }, 'open', undefined],
    ['cancel removed the queued job', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { ended: ended('cancelled', '0', 'client_cancelled') } }, 'cancelled', { write: 'close_job', status: 'cancelled', billedUnits: '0', errorCode: 'client_cancelled' }],
    ['cancel only signalled a running job and fal completed it: collected', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { result: { images: 1 } } }, 'completed', undefined],
    ['cancel unconfirmed: left open', submitted, { type: 'cancel_settled', error: fail('status', 'aborted'), outcome: { unknown: true } }, 'open', undefined],
  ];
  for (const [name, from, event, at, write] of cases) {
    it(name, () => {
      const t = nextJobState(from, event);
      assert.equal(t.state.at, at);
      assert.deepEqual(t.write, write);
    });
  }

  it('an event out of order is a bug, not a state', () => {
    assert.throws(() => nextJobState<R, FalFailure>(submitting, { type: 'result', result: { images: 1 } }), /job event result in state submitting/);
    assert.throws(() => nextJobState<R, FalFailure>(submitted, { type: 'submitted', falRequestId: 'f2' }), /in state submitted/);
  });
});

describe('decideRequest: the jobs’ states → the request row, the caller’s answer, whether a retry is safe', () => {
  const completed = (id: string): JobState<R> => ({ at: 'completed', falRequestId: id, result: { images: 1 } });
  const refused: JobState<R> = { at: 'refused', error: fail('submit', 'http', 422) };
  const rateLimited: JobState<R> = { at: 'refused', error: fail('submit', 'http', 429) };
  const unknown: JobState<R> = { at: 'unknown', error: fail('submit', 'network', undefined, true), falRequestId: undefined };
  const open: JobState<R> = { at: 'open', falRequestId: 'f9', error: fail('status', 'network') };
  const failed: JobState<R> = { at: 'failed', falRequestId: 'f8', error: fail('result', 'http', 422), ended: ended('failed', '1') };
  const cancelled: JobState<R> = { at: 'cancelled', falRequestId: 'f7', error: fail('status', 'aborted'), ended: ended('cancelled', '0') };

  const table: Array<[string, JobState<R>[], StopReason | undefined, unknown, 'images' | 'error' | 'metering_unavailable', boolean | undefined]> = [
    ['every job completed: charged, answered with images', [completed('a'), completed('b')], undefined, { write: 'settle' }, 'images', undefined],
    ['refused at submit: closed uncharged, a retry is safe', [refused], undefined, { write: 'close', status: 'failed', errorCode: 'submit_422' }, 'error', true],
    ['rate limited at submit: a retry is safe', [rateLimited], undefined, { write: 'close', status: 'failed', errorCode: 'submit_429' }, 'error', true],
    ['deadline, the job cancelled: released, no retry once a job existed', [cancelled], 'deadline', { write: 'close', status: 'released', errorCode: 'deadline' }, 'error', false],
    ['one completed, one failed, caller waiting: answered with the error, so never charged', [completed('a'), cancelled, failed], undefined, { write: 'close', status: 'failed', errorCode: 'job_failed_422' }, 'error', false],
    ['one completed, one open, caller waiting: the error answer closes it uncharged; the open job is reconciled for its cost', [completed('a'), open], undefined, { write: 'close', status: 'failed', errorCode: 'job_failed_network' }, 'error', false],
    ['the submit outcome unknown: answered with an error, no retry invited', [unknown, unknown], undefined, { write: 'close', status: 'failed', errorCode: 'submit_network' }, 'error', false],
    ['caller gone, one completed, one open: no answer written, reconciliation charges what completes', [completed('a'), open], 'client_gone', { write: 'none' }, 'error', false],
    ['caller gone, one completed, one failed: charged for the completed one', [completed('a'), failed], 'client_gone', { write: 'settle' }, 'error', false],
    ['caller gone, every job cancelled: released', [cancelled], 'client_gone', { write: 'close', status: 'released', errorCode: 'client_gone' }, 'error', false],
    ['a job the ledger could not record: metering unavailable, nothing else written', [completed('a'), { at: 'unrecorded', falRequestId: 'x', error: fail('submit', 'aborted') }], undefined, { write: 'none' }, 'metering_unavailable', undefined],
  ];
  for (const [name, jobs, stopped, ledger, answer, retrySafe] of table) {
    it(name, () => {
      const d = decideRequest(jobs, stopped);
      assert.deepEqual(d.ledger, ledger);
      assert.equal(d.caller.answer, answer);
      if (retrySafe !== undefined) assert.equal(d.caller.answer === 'error' && d.caller.retrySafe, retrySafe);
    });
  }

  it('the root cause is the answer, not a sibling we cut because of it', () => {
    const d = decideRequest([completed('a'), cancelled, failed], undefined);
    assert.equal(d.caller.answer === 'error' && d.caller.error.status, 422);
    assert.deepEqual(d.completed, [{ images: 1 }], 'the completed job is still recorded, as unrecovered cost');
  });

  it('a request decided with a job still waiting is a bug', () => {
    assert.throws(() => decideRequest([submitted], undefined), /still submitted/);
  });
});

describe('afterLook: what reconciliation does with what fal said of a job it holds open', () => {
  const young: LookContext = { pastDeadline: false, imagesUnwanted: false };
  const unwanted: LookContext = { pastDeadline: false, imagesUnwanted: true };
  const late: LookContext = { pastDeadline: true, imagesUnwanted: false };
  const lateUnwanted: LookContext = { pastDeadline: true, imagesUnwanted: true };
  const running: FalLook = { seen: 'waiting', status: 'IN_PROGRESS' };
  const failing: FalLook = { seen: 'unreadable', lastWord: 'result 503', billedUnits: null };
  const table: Array<[string, FalLook, LookContext, unknown]> = [
    ['fal returned the result: recorded (settled with an open request, as cost of a closed one)', { seen: 'completed' }, young, { step: 'complete' }],
    ['fal returned the result after the deadline: still fal’s word, recorded', { seen: 'completed' }, late, { step: 'complete' }],
    ['fal says the job ended with an error: closed at what it billed', { seen: 'ended', ended: ended('failed', '1', 'validation_error') }, young, { step: 'close', write: { write: 'close_job', status: 'failed', billedUnits: '1', errorCode: 'validation_error' } }],
    ['a cancel fal finally honoured: closed cancelled', { seen: 'ended', ended: ended('cancelled', '0', 'client_cancelled') }, late, { step: 'close', write: { write: 'close_job', status: 'cancelled', billedUnits: '0', errorCode: 'client_cancelled' } }],
    ['fal knows no job under the id: refused, $0', { seen: 'absent' }, young, { step: 'close', write: { write: 'close_job', status: 'refused', billedUnits: '0', errorCode: 'not_found_at_fal' } }],
    ['still running, caller gone with the request open: wait, its images are the caller’s', running, young, { step: 'wait', cancel: false }],
    ['still running, nobody will receive it (request closed): cancel at fal, look again next round', running, unwanted, { step: 'wait', cancel: true }],
    ['running past the deadline (fal ignored the cancel): cancel once more, then lost at the estimate', running, late, { step: 'give_up', cancel: true, write: { write: 'close_job', status: 'lost', billedUnits: null, errorCode: 'gave_up', lastWord: 'IN_PROGRESS' } }],
    ['queued past the deadline: the same', { seen: 'waiting', status: 'IN_QUEUE' }, lateUnwanted, { step: 'give_up', cancel: true, write: { write: 'close_job', status: 'lost', billedUnits: null, errorCode: 'gave_up', lastWord: 'IN_QUEUE' } }],
    ['status or result failing 5xx: wait (no cancel: fal’s answers are what fails)', failing, young, { step: 'wait', cancel: false }],
    ['failing 5xx past the deadline: lost, fal’s last word kept, at the estimate', failing, late, { step: 'give_up', cancel: false, write: { write: 'close_job', status: 'lost', billedUnits: null, errorCode: 'gave_up', lastWord: 'result 503' } }],
    ['failing past the deadline, the failed answer carried units: lost at what fal billed', { seen: 'unreadable', lastWord: 'result 500', billedUnits: '1' }, late, { step: 'give_up', cancel: false, write: { write: 'close_job', status: 'lost', billedUnits: '1', errorCode: 'gave_up', lastWord: 'result 500' } }],
  ];
  for (const [name, look, ctx, step] of table) {
    it(name, () => assert.deepEqual(afterLook(look, ctx), step));
  }
});

describe('decideReconciled: an open request (no answer was written) once its jobs have been looked at', () => {
  const table: Array<[string, ReconciledJob[], unknown]> = [
    ['a job still open: the hold is kept, looked at again next round', ['completed', 'open'], { write: 'wait' }],
    ['every job completed: settled, the images are the caller’s', ['completed', 'completed'], { write: 'settle' }],
    ['one completed, one given up: settled on the completed one; the lost one is cost only', ['completed', 'lost'], { write: 'settle' }],
    ['nothing completed, fal ended them: closed uncharged', ['ended', 'ended'], { write: 'close', errorCode: 'job_failed' }],
    ['nothing completed, a job given up: closed uncharged as given up, the hold returned', ['ended', 'lost'], { write: 'close', errorCode: 'gave_up' }],
  ];
  for (const [name, jobs, write] of table) {
    it(name, () => assert.deepEqual(decideReconciled(jobs), write));
  }
});
