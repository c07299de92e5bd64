import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { FIELD_RULES } from '../../src/schemas/fields.js';
import { startTestService, TEST_KEY, type TestService } from '../helpers/service.js';

/**
 * docs/clients.md, checked: every snippet runs against a live service as
 * written (only the address and key are swapped for the test service's), and
 * its field-policy table agrees with FIELD_RULES.
 */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DOC = readFileSync(`${ROOT}docs/clients.md`, 'utf8');
const DOC_URL = 'http://127.0.0.1:8080';
const DOC_KEY = 'sk-local-0123456789abcdef';
const run = promisify(execFile);

function blocks(lang: string): string[] {
  return [...DOC.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]!);
}

/** What each snippet prints, in the order of the page. */
const EXPECTED_JS: RegExp[] = [
  /^2 0\.010000\nignored: quality \[ 'quality' \]\n$/,
  /^image\/jpeg \d+ bytes, image\/jpeg \d+ bytes\ncalls: 2\n$/,
  // The URL is signed for the key that asked: its query carries the tenant, expiry and signature.
  /^url: http:\/\/127\.0\.0\.1:\d+\/v1\/files\/\S+\.png\?tenant=\S+&expires=\d+&signature=\S+\nbase64 characters: \d{3,}\n$/,
];

describe('docs/clients.md', () => {
  let t: TestService;
  before(async () => {
    t = await startTestService({}, { imageMode: 'cheap' });
  });
  after(async () => {
    await t.close();
  });

  const js = blocks('js');
  it('has one JavaScript snippet per client', () => assert.equal(js.length, EXPECTED_JS.length));

  js.forEach((code, k) => {
    it(`JavaScript snippet ${k + 1} runs as written (${/from '([^']+)'/.exec(code)?.[1]})`, async () => {
      assert.ok(code.includes(DOC_URL) && code.includes(DOC_KEY), 'the snippet uses the documented address and key');
      const live = code.replaceAll(DOC_URL, t.url).replaceAll(DOC_KEY, TEST_KEY);
      // Evaluated from the project root, so the snippet's imports resolve to the installed packages.
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', live], { cwd: ROOT, timeout: 60_000 });
      assert.match(stdout, EXPECTED_JS[k]!);
    });
  });

  it('the curl snippet shows the ignored hint in the header and in meta', async () => {
    const [sh] = blocks('sh');
    assert.ok(sh?.includes('curl'));
    const { stdout } = await run('bash', ['-c', `set -o pipefail; ${sh!.replaceAll(DOC_URL, t.url).replaceAll(DOC_KEY, TEST_KEY)}`], { timeout: 60_000 });
    assert.match(stdout, /^HTTP\/1\.1 200 OK/);
    assert.match(stdout, /^x-ignored-params: style\r?$/im);
    assert.match(stdout, /"ignored_params":\["style"\]/);
  });

  it("the field-policy table gives each of FIELD_RULES' fields its class", () => {
    const rows = new Map([...DOC.matchAll(/^\| `([a-z_]+)` \| ([^|]+) \|/gm)].map((m) => [m[1]!, m[2]!.trim()]));
    for (const [field, rule] of Object.entries(FIELD_RULES)) {
      const cls = rows.get(field);
      assert.ok(cls, `docs/clients.md has no row for ${field}`);
      assert.match(cls, rule.role === 'hint' ? /^ignored/ : /^honoured/, `${field}: ${cls}`);
    }
  });
});
