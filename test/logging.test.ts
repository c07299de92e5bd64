import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { createLogger, logFormatFor, prettyDestination, REDACTED } from '../src/logging.js';

describe('log format', () => {
  const cases: Array<['auto' | 'json' | 'pretty', boolean, 'json' | 'pretty']> = [
    ['auto', true, 'pretty'],
    ['auto', false, 'json'],
    ['json', true, 'json'],
    ['pretty', false, 'pretty'],
  ];
  for (const [setting, tty, expected] of cases) {
    it(`LOG_FORMAT=${setting} on ${tty ? 'a terminal' : 'a pipe'} → ${expected}`, () => assert.equal(logFormatFor(setting, tty), expected));
  }
});

describe('pretty destination', () => {
  it('prints lines for people, after the secrets were scrubbed from the JSON line', () => {
    const out = new PassThrough();
    const chunks: string[] = [];
    out.on('data', (c: Buffer) => chunks.push(c.toString('utf8')));
    const secret = 'fal-secret-key-0123456789';
    const logger = createLogger({ level: 'info', secrets: [secret], destination: prettyDestination({ destination: out, colorize: false }) });
    logger.info({ request_id: 'req_1', note: `upstream said ${secret}` }, 'request failed');
    logger.warn('careful');
    const text = chunks.join('');
    assert.match(text, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: request failed\n {4}request_id: "req_1"\n/);
    assert.match(text, /WARN: careful/);
    assert.ok(!text.includes(secret), text);
    assert.ok(text.includes(REDACTED));
    assert.ok(!text.trimStart().startsWith('{'), 'not JSON');
    assert.doesNotMatch(text, /pid|hostname/);
  });
});
