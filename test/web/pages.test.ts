import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describeInBrowser, screenshot, type GuardedPage } from '../helpers/browser.js';
import { startTestService, OTHER_KEY, TEST_KEY, type TestService } from '../helpers/service.js';
import { BLUE, H, RED, W, inputPng, maxDiff, pixelsOf } from '../helpers/edit-images.js';

/**
 * The playground, the usage page and the docs, as a person uses them in
 * headless Chromium against a real service and emulator. Every page is
 * fenced to 127.0.0.1 (any other request is aborted and fails the test) and
 * must run without a console error, so a CSP violation or a CDN asset fails
 * here too. WEB_SCREENSHOTS_DIR=… keeps a screenshot of each page.
 */

interface UsageRow {
  group: string;
  requests: number;
  images: number;
  cost_usd: string;
  credits: number;
}

interface UsageReport {
  totals: { requests: number; images: number; cost_usd: string; credits: number };
  data: UsageRow[];
}

// The page side of `evaluate` callbacks, typed by hand: the project compiles without the DOM library.
interface ImageElement {
  src: string;
  naturalWidth: number;
  naturalHeight: number;
  decode(): Promise<void>;
}
interface PageGlobals {
  sessionStorage: { length: number; key(i: number): string | null; getItem(k: string): string | null };
  localStorage: { length: number };
}

function assertStayedLocal(g: GuardedPage): void {
  assert.deepEqual(g.offsite, [], 'requests that tried to leave 127.0.0.1');
  assert.deepEqual(g.errors, [], 'console errors');
}

describeInBrowser('pages in headless Chromium', (browser) => {
  let t: TestService;
  before(async () => {
    // Inpainting is served only when its endpoint is priced (docs/MODELS.md): the drawn mask needs it.
    t = await startTestService({ MODEL_PRICES: '{"fal-ai/z-image/turbo/inpaint":"0.006"}' });
  });
  after(async () => {
    await t.close();
  });

  async function usage(key: string, query: string): Promise<UsageReport> {
    const res = await fetch(`${t.url}/v1/usage?${query}`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(res.status, 200);
    return (await res.json()) as UsageReport;
  }

  async function models(): Promise<Array<{ id: string; limits: Record<string, number>; capabilities: string[]; edit_endpoints?: { image_to_image: { usd_per_unit: string }; inpaint?: { usd_per_unit: string } } }>> {
    const res = await fetch(`${t.url}/v1/models`, { headers: { authorization: `Bearer ${TEST_KEY}` } });
    return ((await res.json()) as { data: Array<{ id: string; limits: Record<string, number>; capabilities: string[] }> }).data;
  }

  /** A new tab on the playground with TEST_KEY typed in and used, once `model` is listed. */
  async function openPlayground(model: string): Promise<GuardedPage> {
    const g = await browser.open();
    await g.page.goto(`${t.url}/`);
    await g.page.getByLabel('API key', { exact: true }).fill(TEST_KEY);
    await g.page.getByRole('button', { name: 'Use key' }).click();
    await g.page.locator(`#model option[value="${model}"]`).waitFor({ state: 'attached' });
    return g;
  }

  it('playground: type the key, pick a model, generate; the images render at the requested size and the cost shown is the response’s', async () => {
    const g = await openPlayground('alibaba/z-image-turbo');
    const { page } = g;
    const model = page.getByLabel('Model', { exact: true });
    const listed = await model.locator('option').evaluateAll((os) => os.map((o) => o.getAttribute('value')));
    assert.deepEqual(listed, (await models()).map((m) => m.id));

    await model.selectOption('alibaba/z-image-turbo');
    await page.getByLabel('Prompt', { exact: true }).fill('a lighthouse at dawn');
    await page.getByLabel('Size', { exact: true }).selectOption('custom');
    await page.getByLabel('Width', { exact: true }).fill('768');
    await page.getByLabel('Height', { exact: true }).fill('512');
    await page.getByLabel('Images (n)', { exact: true }).fill('2');
    await page.getByLabel('Seed', { exact: true }).fill('7');
    await page.getByLabel('Steps', { exact: true }).fill('4');
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${t.url}/v1/images/generations`),
      page.getByRole('button', { name: 'Generate' }).click(),
    ]);
    assert.equal(response.status(), 200);
    assert.deepEqual(response.request().postDataJSON(), {
      model: 'alibaba/z-image-turbo',
      prompt: 'a lighthouse at dawn',
      n: 2,
      image_size: { width: 768, height: 512 },
      seed: 7,
      num_inference_steps: 4,
    });
    const body = (await response.json()) as { data: Array<{ url: string }>; meta: { usage: { cost_usd: string; credits_used: number } } };

    const images = page.getByRole('img', { name: /^Image \d of 2: a lighthouse at dawn$/ });
    await images.nth(1).waitFor();
    const rendered = await images.evaluateAll((imgs) =>
      Promise.all(imgs.map(async (img) => {
        const el = img as unknown as ImageElement;
        await el.decode();
        return { src: el.src, width: el.naturalWidth, height: el.naturalHeight };
      })),
    );
    assert.deepEqual(rendered, body.data.map((d) => ({ src: d.url, width: 768, height: 512 })));

    const cost = page.locator('#cost-usd');
    assert.equal(await cost.getAttribute('data-cost-usd'), body.meta.usage.cost_usd);
    assert.equal(await cost.textContent(), `$${body.meta.usage.cost_usd}`);
    assert.equal(body.meta.usage.cost_usd, response.headers()['x-usage-cost-usd']);
    assert.equal(await page.locator('#cost-credits').textContent(), body.meta.usage.credits_used.toLocaleString('en'));

    // The key is in this tab's session only: not in localStorage, not in a cookie.
    const stored = await page.evaluate(() => {
      const { sessionStorage: session, localStorage: local } = globalThis as unknown as PageGlobals;
      return { session: Array.from({ length: session.length }, (_, i) => session.getItem(session.key(i)!)), local: local.length };
    });
    assert.deepEqual(stored, { session: [TEST_KEY], local: 0 });
    assert.deepEqual(await browser.context().cookies(), []);

    await screenshot(page, 'playground');
    assertStayedLocal(g);
    await page.close();
  });

  it('playground: the controls follow the model’s limits from /v1/models; LoRAs only where the model takes them', async () => {
    const g = await openPlayground('alibaba/z-image-turbo-lora');
    const { page } = g;
    const limits = new Map((await models()).map((m) => [m.id, m.limits]));

    for (const id of ['alibaba/z-image-turbo', 'alibaba/z-image-turbo-lora']) {
      await page.getByLabel('Model', { exact: true }).selectOption(id);
      const l = limits.get(id)!;
      assert.equal(await page.getByLabel('Images (n)', { exact: true }).getAttribute('max'), String(l.max_images_per_request), id);
      assert.equal(await page.getByLabel('Steps', { exact: true }).getAttribute('max'), String(l.max_inference_steps), id);
      assert.equal(await page.getByLabel('Prompt', { exact: true }).getAttribute('maxlength'), String(l.prompt_max_length), id);
      assert.equal(await page.getByRole('group', { name: 'LoRAs' }).isVisible(), l.max_loras! > 0, id);
    }

    const addLora = page.getByRole('button', { name: 'Add LoRA' });
    for (let i = 0; i < limits.get('alibaba/z-image-turbo-lora')!.max_loras!; i++) await addLora.click();
    assert.equal(await addLora.isDisabled(), true, 'no more LoRAs than the model takes');
    await page.getByRole('button', { name: 'Remove LoRA 3' }).click();
    await page.getByRole('button', { name: 'Remove LoRA 2' }).click();
    await page.getByLabel('Path', { exact: true }).fill('https://example.com/loras/style.safetensors');
    await page.getByLabel('Scale', { exact: true }).fill('0.8');
    await page.getByLabel('Prompt', { exact: true }).fill('a portrait');
    await page.getByLabel('Size', { exact: true }).selectOption('square');
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${t.url}/v1/images/generations`),
      page.getByRole('button', { name: 'Generate' }).click(),
    ]);
    assert.equal(response.status(), 200);
    assert.deepEqual(response.request().postDataJSON(), {
      model: 'alibaba/z-image-turbo-lora',
      prompt: 'a portrait',
      n: 1,
      image_size: 'square',
      loras: [{ path: 'https://example.com/loras/style.safetensors', scale: 0.8 }],
    });
    const img = page.getByRole('img', { name: 'Image 1 of 1: a portrait' });
    await img.waitFor();
    assert.equal(await img.evaluate((el) => (el as unknown as ImageElement).decode().then(() => (el as unknown as ImageElement).naturalWidth)), 512);
    await screenshot(page, 'playground-lora');

    // Back on a model without LoRAs, none are sent.
    await page.getByLabel('Model', { exact: true }).selectOption('alibaba/z-image-turbo');
    const [plain] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${t.url}/v1/images/generations`),
      page.getByRole('button', { name: 'Generate' }).click(),
    ]);
    assert.equal((plain.request().postDataJSON() as Record<string, unknown>).loras, undefined);
    assertStayedLocal(g);
    await page.close();
  });

  it('playground: the API’s error is shown for a wrong key', async () => {
    const g = await browser.open();
    await g.page.goto(`${t.url}/`);
    await g.page.getByLabel('API key', { exact: true }).fill('sk-wrong-0123456789abcdef');
    await g.page.getByRole('button', { name: 'Use key' }).click();
    await g.page.getByRole('alert').filter({ hasText: 'Invalid API key.' }).waitFor();
    assert.equal(await g.page.locator('#generate-form').isVisible(), false);
    assert.deepEqual(g.offsite, []);
    await g.page.close();
  });

  /** A tab in Edit mode with the key typed in and the image chosen. */
  async function openEdit(image: { name: string; mimeType: string; buffer: Buffer }): Promise<GuardedPage> {
    const g = await openPlayground('alibaba/z-image-turbo');
    const { page } = g;
    await page.getByRole('radio', { name: 'Edit' }).check();
    await page.getByLabel('Image', { exact: true }).setInputFiles(image);
    await page.getByLabel('Prompt', { exact: true }).fill('repaint it');
    return g;
  }

  function postEdit(page: GuardedPage['page']) {
    return Promise.all([
      page.waitForResponse((r) => r.url() === `${t.url}/v1/images/edits`),
      page.getByRole('button', { name: 'Edit', exact: true }).click(),
    ]).then(([response]) => response);
  }

  it('playground edit: only models that edit are offered; an image without a mask comes back at its size, with the cost shown', async () => {
    const g = await openEdit({ name: 'input.png', mimeType: 'image/png', buffer: await inputPng() });
    const { page } = g;
    const all = await models();
    const listed = await page.locator('#model option').evaluateAll((os) => os.map((o) => o.getAttribute('value')));
    assert.deepEqual(listed, all.filter((m) => m.capabilities.includes('edits')).map((m) => m.id));
    assert.ok(listed.length < all.length, 'some models only generate');
    // The mask controls only for a model that inpaints.
    for (const id of listed) {
      await page.getByLabel('Model', { exact: true }).selectOption(id!);
      assert.equal(await page.getByRole('group', { name: 'Mask (optional)' }).isVisible(), all.find((m) => m.id === id)!.capabilities.includes('inpaint'), id!);
    }
    await page.getByLabel('Model', { exact: true }).selectOption('alibaba/z-image-turbo');
    // The price line is the edit's: image-to-image, and inpaint with a mask (priced by MODEL_PRICES here).
    const edits = all.find((m) => m.id === 'alibaba/z-image-turbo')!.edit_endpoints!;
    assert.ok(edits.inpaint, 'the test prices inpainting');
    assert.match(await page.locator('#model-info').textContent() ?? '', new RegExp(`edit: \\$${edits.image_to_image.usd_per_unit.replace('.', '\\.')} per \\w+, \\$${edits.inpaint.usd_per_unit.replace('.', '\\.')} with a mask`));
    assert.equal(await page.getByLabel('Size', { exact: true }).isVisible(), false, 'an edit takes the input’s size');
    await page.getByRole('img', { name: 'The image to edit' }).waitFor();

    const response = await postEdit(page);
    assert.equal(response.status(), 200);
    assert.match(response.request().headers()['content-type']!, /^multipart\/form-data; boundary=/);
    const sent = response.request().postData()!;
    assert.doesNotMatch(sent, /name="mask"/, 'no mask drawn, none sent');
    assert.match(sent, /name="image"; filename="input.png"/);
    const body = (await response.json()) as { data: Array<{ url: string }>; meta: { usage: { cost_usd: string } } };
    const img = page.getByRole('img', { name: 'Image 1 of 1: repaint it' });
    await img.waitFor();
    const size = await img.evaluate((el) => (el as unknown as ImageElement).decode().then(() => [(el as unknown as ImageElement).naturalWidth, (el as unknown as ImageElement).naturalHeight]));
    assert.deepEqual(size, [W, H]);
    assert.equal(await img.evaluate((el) => (el as unknown as ImageElement).src), body.data[0]!.url);
    const cost = page.locator('#cost-usd');
    assert.equal(await cost.getAttribute('data-cost-usd'), body.meta.usage.cost_usd);
    assert.equal(await cost.textContent(), `$${body.meta.usage.cost_usd}`);
    assert.equal(body.meta.usage.cost_usd, response.headers()['x-usage-cost-usd']);
    await screenshot(page, 'playground-edit');
    assertStayedLocal(g);
    await page.close();
  });

  it('playground edit: a stroke drawn on the preview becomes the mask; only the area under it is repainted', async () => {
    const g = await openEdit({ name: 'input.png', mimeType: 'image/png', buffer: await inputPng() });
    const { page } = g;
    await page.getByLabel('Brush size (image pixels)').fill('16');
    const canvas = page.getByRole('img', { name: 'Mask: draw over the area to change' });
    await page.getByRole('img', { name: 'The image to edit' }).waitFor();
    const box = (await canvas.boundingBox())!;
    // A horizontal stroke in the image's own pixels, y = 40, x from 20 to 100 (the red half), away from the EMULATED band in the middle.
    const client = (x: number, y: number): [number, number] => [box.x + (x * box.width) / W, box.y + (y * box.height) / H];
    await page.mouse.move(...client(20, 40));
    await page.mouse.down();
    await page.mouse.move(...client(100, 40), { steps: 8 });
    await page.mouse.up();
    assert.equal(await page.getByRole('button', { name: 'Clear mask' }).isEnabled(), true);

    const response = await postEdit(page);
    assert.equal(response.status(), 200);
    assert.match(response.request().postData()!, /name="mask"; filename="mask.png"/);
    const body = (await response.json()) as { data: Array<{ url: string }> };
    await page.getByRole('img', { name: 'Image 1 of 1: repaint it' }).waitFor();
    const out = await pixelsOf(Buffer.from(await (await fetch(body.data[0]!.url)).arrayBuffer()));
    assert.deepEqual([out.width, out.height], [W, H]);
    assert.ok(maxDiff(out, RED, 30, 38, 90, 42) > 25, 'under the stroke: repainted');
    assert.ok(maxDiff(out, RED, 0, 0, W / 2, 20) <= 2, 'above the stroke (red half): kept');
    // The stroke spans x 12–108 (a 16-pixel round brush from 20 to 100): either end of its row is kept.
    assert.ok(maxDiff(out, RED, 0, 34, 8, 46) <= 2, 'left of the stroke: kept');
    assert.ok(maxDiff(out, RED, 114, 34, W / 2, 46) <= 2, 'right of the stroke: kept');
    assert.ok(maxDiff(out, BLUE, W / 2, 0, W, 60) <= 2, 'beside the stroke (blue half): kept');
    assert.ok(maxDiff(out, RED, 0, H - 20, W / 2, H) <= 2, 'far below (red half): kept');
    assert.ok(maxDiff(out, BLUE, W / 2, H - 20, W, H) <= 2, 'far below (blue half): kept');
    await screenshot(page, 'playground-inpaint');
    assertStayedLocal(g);
    await page.close();
  });

  it('playground edit: bytes that are no image are refused, and the error names image', async () => {
    const g = await openEdit({ name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('just some text, not an image\n') });
    const { page } = g;
    const response = await postEdit(page);
    assert.equal(response.status(), 400);
    const body = (await response.json()) as { error: { param: string; message: string } };
    assert.equal(body.error.param, 'image');
    const alert = page.getByRole('alert');
    await alert.filter({ hasText: body.error.message }).waitFor();
    assert.match((await alert.textContent())!, /\bimage\b/);
    assert.equal(await page.locator('#images img').count(), 0);
    // The 400 itself is a console error in Chromium ("Failed to load resource"): only the fence is checked.
    assert.deepEqual(g.offsite, []);
    await page.close();
  });

  it('usage: the charts’ numbers equal GET /v1/usage by day and by model, for the key typed in', async () => {
    // Spend on two models under OTHER_KEY; TEST_KEY's spend (earlier tests) must not show.
    for (const [model, n] of [['alibaba/z-image-turbo', 1], ['alibaba/z-image-turbo-lora', 3]] as const) {
      const res = await fetch(`${t.url}/v1/images/generations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${OTHER_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, prompt: 'usage chart', n, image_size: 'square_hd' }),
      });
      assert.equal(res.status, 200);
    }
    const g = await browser.open();
    const { page } = g;
    await page.goto(`${t.url}/usage`);
    await page.getByLabel('API key', { exact: true }).fill(OTHER_KEY);
    await page.getByRole('button', { name: 'Use key' }).click();
    await page.locator('#report').waitFor();

    const readTable = (groupBy: string) =>
      page.locator(`table[data-group-by="${groupBy}"] tbody tr`).evaluateAll((trs) =>
        trs.map((tr) => {
          // No helper function in here: tsx would wrap it in a `__name` call the page does not define.
          const [group, requests, images, cost, credits] = ['group', 'requests', 'images', 'cost-usd', 'credits'].map((n) => tr.getAttribute(`data-${n}`));
          return { group, requests: Number(requests), images: Number(images), cost_usd: cost, credits: Number(credits) };
        }),
      );
    const readBars = (groupBy: string) =>
      page.locator(`figure[data-group-by="${groupBy}"] svg rect.bar`).evaluateAll((rects) =>
        rects.map((r) => ({ group: r.getAttribute('data-group'), cost_usd: r.getAttribute('data-cost-usd'), width: Number(r.getAttribute('width')) })),
      );

    for (const groupBy of ['day', 'model']) {
      const api = await usage(OTHER_KEY, `group_by=${groupBy}`);
      assert.ok(api.data.length >= 1 && api.totals.requests === 2, JSON.stringify(api));
      assert.deepEqual(await readTable(groupBy), api.data, groupBy);
      const bars = await readBars(groupBy);
      assert.deepEqual(bars.map(({ group, cost_usd }) => ({ group, cost_usd })), api.data.map(({ group, cost_usd }) => ({ group, cost_usd })), groupBy);
      assert.equal(await page.locator('#total-cost').getAttribute('data-cost-usd'), api.totals.cost_usd);
    }
    // The bars are drawn to scale: their lengths stand as the amounts do.
    const byModel = await readBars('model');
    assert.equal(byModel.length, 2);
    const [a, b] = byModel as [(typeof byModel)[number], (typeof byModel)[number]];
    assert.ok(Math.abs(a.width / b.width - Number(a.cost_usd) / Number(b.cost_usd)) < 0.01, JSON.stringify(byModel));
    await screenshot(page, 'usage');

    // A period with no spend: the page asks the API for that period and shows what it answers.
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    await page.getByLabel('From (UTC day)').fill(tomorrow);
    const [filtered] = await Promise.all([
      page.waitForResponse((r) => r.url().includes('/v1/usage?group_by=model')),
      page.getByRole('button', { name: 'Show' }).click(),
    ]);
    assert.equal(new URL(filtered.url()).searchParams.get('from'), tomorrow);
    await page.getByRole('status').filter({ hasText: 'No spend in this period.' }).waitFor();
    assert.deepEqual(await readTable('model'), (await usage(OTHER_KEY, `group_by=model&from=${tomorrow}`)).data);
    assert.deepEqual(await readTable('model'), []);
    assertStayedLocal(g);
    await page.close();
  });

  it('docs: Swagger UI renders openapi.yaml, its ./schemas references resolved, with nothing fetched from elsewhere', async () => {
    const g = await browser.open();
    const { page } = g;
    const schemaAnswers: Array<[string, number]> = [];
    page.on('response', (r) => {
      if (new URL(r.url()).pathname.startsWith('/schemas/')) schemaAnswers.push([r.url(), r.status()]);
    });
    await page.goto(`${t.url}/docs`);
    const operation = page.locator('.opblock-summary-path', { hasText: /^\/v1\/images\/generations$/ }).first();
    await operation.waitFor();
    await operation.click();
    // The request body's schema is a `$ref` to ./schemas/*.json: its title shows only once that file is fetched and read.
    const body = page.locator('#operations-images-createImage .opblock-section-request-body');
    await body.getByRole('tab', { name: 'Schema' }).click();
    await body.getByText('Any of', { exact: true }).click();
    const title = (JSON.parse(readFileSync(new URL('../../schemas/z-image-turbo.request.json', import.meta.url), 'utf8')) as { title: string }).title;
    await body.getByText(title).waitFor();
    await page.waitForLoadState('networkidle');
    assert.ok(schemaAnswers.length > 0, 'the viewer fetched the referenced schemas');
    assert.deepEqual(schemaAnswers.filter(([, status]) => status !== 200), []);
    assert.equal(await page.locator('.errors-wrapper').count(), 0, 'Swagger UI reports no resolver errors');
    await screenshot(page, 'docs');
    assertStayedLocal(g);
    await page.close();
  });
});
