import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { enableWal } from '../../src/db/sqlite.js';

/** What a pragma call does: throw SQLite's error with `code`, or answer. */
function fakeDb(answers: Array<string | undefined>): { pragma(source: string): unknown; calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    pragma(source: string) {
      calls.push(source);
      const code = answers.shift();
      if (code) throw Object.assign(new Error('database is locked'), { code });
      return [{ journal_mode: 'wal' }];
    },
  };
}

describe('sqlite: switching a file to WAL', () => {
  it('retries while another process holds the file (SQLITE_BUSY), then switches', () => {
    const db = fakeDb(['SQLITE_BUSY', 'SQLITE_BUSY_RECOVERY', undefined]);
    enableWal(db, 5_000);
    assert.deepEqual(db.calls, ['journal_mode = WAL', 'journal_mode = WAL', 'journal_mode = WAL']);
  });

  it('gives up with SQLite’s own error once the busy timeout has passed', () => {
    const db = fakeDb(Array(1_000).fill('SQLITE_BUSY'));
    assert.throws(() => enableWal(db, 30), (err: unknown) => (err as { code?: string }).code === 'SQLITE_BUSY');
    assert.ok(db.calls.length >= 2, `tried ${db.calls.length} times`);
  });

  it('does not retry other errors', () => {
    const db = fakeDb(['SQLITE_READONLY']);
    assert.throws(() => enableWal(db, 5_000), (err: unknown) => (err as { code?: string }).code === 'SQLITE_READONLY');
    assert.equal(db.calls.length, 1);
  });
});
