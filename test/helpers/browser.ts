/**
 * Headless Chromium for the page tests: Debian's `chromium`, driven by
 * playwright-core (which brings no browser of its own). When it is not
 * installed these suites are skipped with the reason, except under CI, where
 * they fail: .ci/run installs it, so a missing browser there is a broken
 * install step, not a reason to skip (the rule databases.ts follows).
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM_PATH = '/usr/bin/chromium';

// Nothing the browser does on its own (updates, sync, field trials, QUIC
// probes) may leave the machine; the pages' own requests are fenced by `open`.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export interface GuardedPage {
  page: Page;
  /** Every request the page tried to send anywhere but 127.0.0.1 (each was aborted). */
  offsite: string[];
  /** Console errors and uncaught exceptions: a CSP violation shows up here. */
  errors: string[];
}

export interface TestBrowser {
  context(): BrowserContext;
  /** A new tab (its own sessionStorage) whose requests may only go to 127.0.0.1. */
  open(): Promise<GuardedPage>;
}

function isLocal(url: string): boolean {
  const u = new URL(url);
  return u.protocol === 'data:' || u.protocol === 'blob:' || u.hostname === '127.0.0.1';
}

export function describeInBrowser(title: string, suite: (browser: TestBrowser) => void): void {
  if (!existsSync(CHROMIUM_PATH)) {
    const why = `${CHROMIUM_PATH} is not installed (apt-get install chromium)`;
    if (process.env.CI) {
      describe(title, () => {
        it('needs Chromium under CI', () => {
          throw new Error(`${why}; CI is set, so this fails instead of skipping`);
        });
      });
    } else {
      describe(title, { skip: why }, () => {});
    }
    return;
  }
  describe(title, () => {
    let userDataDir = '';
    let context: BrowserContext | undefined;
    before(async () => {
      userDataDir = await mkdtemp(join(tmpdir(), 'gw-chromium-'));
      context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM_PATH,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1280, height: 900 },
      });
    });
    after(async () => {
      await context?.close();
      await rm(userDataDir, { recursive: true, force: true });
    });
    suite({
      context: () => context!,
      async open() {
        const page = await context!.newPage();
        const offsite: string[] = [];
        const errors: string[] = [];
        page.on('console', (m) => {
          if (m.type() === 'error') errors.push(m.text());
        });
        page.on('pageerror', (e) => errors.push(e.message));
        await page.route('**/*', (route) => {
          const url = route.request().url();
          if (isLocal(url)) return route.continue();
          offsite.push(url);
          return route.abort('blockedbyclient');
        });
        return { page, offsite, errors };
      },
    });
  });
}

/**
 * A full-page PNG in WEB_SCREENSHOTS_DIR, when it is set, for a person to
 * look at what the tests saw; nothing otherwise.
 */
export async function screenshot(page: Page, name: string): Promise<void> {
  const dir = process.env.WEB_SCREENSHOTS_DIR;
  if (!dir) return;
  await mkdir(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}
