import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { ADMIN_KEY, USER_KEY, fakeApp, fakeKeysStore, fakeReports, memoryLogger } from '../helpers/fakes.js';

/**
 * The usage and key routes over a store that fails: a retryable 503 only
 * when storage cannot be reached, our 500 (no retry invited) when it
 * answered and refused. Each is logged at error level with its cause.
 */
function fails(message: string, code?: string): Error {
  return code === undefined ? new Error(message) : Object.assign(new Error(message), { code });
}

const FAILURES: ReadonlyArray<readonly [string, () => Error, 503 | 500]> = [
  ['pg: connection refused', () => fails('connect ECONNREFUSED 127.0.0.1:5432', 'ECONNREFUSED'), 503],
  ['pg: no connection within the pool timeout', () => fails('timeout exceeded when trying to connect'), 503],
  ['pg: connection lost', () => fails('Connection terminated unexpectedly'), 503],
  ['pg: disk full (53100)', () => fails('could not extend file', '53100'), 503],
  ['SQLite: busy', () => fails('database is locked', 'SQLITE_BUSY'), 503],
  ['SQLite: closed', () => new TypeError('The database connection is not open'), 503],
  ['pg: a NUL refused (22021)', () => fails('invalid byte sequence for encoding "UTF8": 0x00', '22021'), 500],
  ['pg: a unique violation (23505)', () => fails('duplicate key value violates unique constraint', '23505'), 500],
  ['a bug in our code', () => new TypeError("Cannot read properties of undefined (reading 'id')"), 500],
];

const admin = { Authorization: `Bearer ${ADMIN_KEY}` };
const user = { Authorization: `Bearer ${USER_KEY}` };

describe('storage errors under the usage and key routes', () => {
  for (const [what, error, status] of FAILURES) {
    it(`${what} → ${status}`, async () => {
      const { logger, lines } = memoryLogger();
      const keys = { ...fakeKeysStore(), list: async () => Promise.reject(error()), create: async () => Promise.reject(error()) };
      const reports = {
        ...fakeReports(),
        usage: async () => Promise.reject(error()),
        exportRows: async function* () {
          throw error();
        },
      };
      const app = fakeApp({ logger, keys, reports });
      const answers = [
        ['GET /v1/admin/keys', await request(app).get('/v1/admin/keys').set(admin)],
        ['POST /v1/admin/keys', await request(app).post('/v1/admin/keys').set(admin).send({ name: 'k' })],
        ['GET /v1/usage', await request(app).get('/v1/usage').set(user)],
        ['GET /v1/admin/usage?format=csv', await request(app).get('/v1/admin/usage?format=csv').set(admin)],
      ] as const;
      for (const [route, res] of answers) {
        assert.equal(res.status, status, `${route}: ${res.text}`);
        if (status === 503) {
          assert.equal(res.body.error.code, 'storage_unavailable');
          assert.equal(res.headers['retry-after'], '5');
        } else {
          assert.deepEqual(res.body.error, { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: 'internal_error' });
          assert.equal(res.headers['retry-after'], undefined);
          assert.equal(res.headers['x-should-retry'], 'false');
        }
      }
      const logged = lines.filter((l) => l['msg'] === 'request failed' && Number(l['level']) === 50);
      assert.equal(logged.length, answers.length);
      for (const l of logged) assert.match(JSON.stringify(l['err']), new RegExp(error().message.slice(0, 20).replace(/[()]/g, '\\$&')));
    });
  }
});
