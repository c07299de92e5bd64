/**
 * Issue 6, "Big images": `b64_json` answers for 4-megapixel (2048×2048)
 * high-entropy PNGs. Peak memory per in-flight response against the size of
 * its base64 (target ≤ 2.5×), and 50 at once without exhausting memory.
 *
 *   npx tsx bench/big-images.ts [--quick] [--k=1,2,5,10,25,50] [--no-write]
 *
 * For each k a fresh service process takes three small warm-up requests;
 * then its VmHWM (the kernel's exact peak of resident memory) is reset to
 * its RSS (/proc/<pid>/clear_refs), and it takes k requests at the same
 * instant; growth = VmHWM − RSS before the k requests. (Without the reset
 * VmHWM would still hold the peak of the process's start, ~30 MiB above its
 * idle RSS, which hid anything smaller.) The per-response figure is k = 1, repeated in fresh
 * processes because a collection landing mid-response changes it: with k
 * above 1 the emulator renders the images a few at a time (sharp on two
 * vCPUs), the answers pass through the service one after another, and
 * growth ÷ k falls with k for that reason, not because an answer got cheaper.
 * The larger k show what many at once do to the peak.
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { keepAliveAgent, post } from './lib/http-client.js';
import { describeMachine } from './lib/machine.js';
import { fixed, ms, table } from './lib/markdown.js';
import { MemSampler, readMem, resetPeak } from './lib/procfs.js';
import { BENCH_FAL_CONCURRENCY, startEmulatorProcess, startServiceProcess, type NodeChild } from './lib/procs.js';
import { machineLine, mib, writeSection } from './lib/readme-section.js';
import { AUTH, emulatorAdmin, imageBody, log, serviceEnv, sleep, tempDir, timeBudget } from './lib/scale.js';
import { median, summarize } from './lib/stats.js';
import { measureCopies, type CopyReport } from './probes/b64-copies.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    k: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
  strict: true,
});

const KS = (args.k ?? (args.quick ? '1,1,5,50' : '1,1,1,1,1,2,5,10,25,50')).split(',').map(Number);
const SIZE = '2048x2048';
const TARGET = 2.5;
timeBudget(KS.length * 8 * 60_000 + 10 * 60_000, 'bench/big-images.ts');

interface KFigures {
  k: number;
  ok: number;
  errors: string[];
  idleRss: number;
  peakRss: number;
  b64Bytes: number;
  responseBytes: number;
  /** Last answer − first answer at the client, s: how staggered the answers were. */
  spreadS: number;
  latency: ReturnType<typeof summarize>;
  wallS: number;
}

/** Width and height from a PNG's IHDR, to prove the answer is the 4-megapixel image asked for. */
function pngSize(b64: string): [number, number] | undefined {
  const head = Buffer.from(b64.slice(0, 32), 'base64');
  if (head.readUInt32BE(0) !== 0x89504e47) return undefined;
  return [head.readUInt32BE(16), head.readUInt32BE(20)];
}

async function runK(k: number, run: number, emu: NodeChild, dir: string): Promise<KFigures> {
  const admin = emulatorAdmin(emu.url);
  await admin.reset();
  const data = await tempDir('gw-big-data-');
  const svc = await startServiceProcess(dir, serviceEnv(emu.url, data.path), `service-${run}-k${k}`);
  const agent = keepAliveAgent();
  const url = `${svc.url}/v1/images/generations`;
  try {
    // Small b64 answers: the code path is compiled and the pools are open, but the HWM stays low.
    for (let i = 0; i < 3; i++) await post(url, imageBody({ size: '512x512', response_format: 'b64_json' }), { agent, headers: AUTH, timeoutMs: 120_000 });
    await admin.reset();
    await sleep(1500);
    // VmHWM from here on: the peak of these k requests, not of the process's start.
    resetPeak(svc.pid);
    const idleRss = readMem(svc.pid).rss;
    const sampler = new MemSampler(svc.pid, 50).start();
    const t0 = performance.now();
    const body = imageBody({ size: SIZE, response_format: 'b64_json' });
    type Outcome = { error: string } | { b64Bytes: number; responseBytes: number; doneAt: number; ms: number };
    const results = await Promise.all(
      Array.from({ length: k }, async (): Promise<Outcome> => {
        try {
          const r = await post(url, body, { agent, headers: AUTH, timeoutMs: 600_000 });
          if (r.status !== 200) return { error: `HTTP ${r.status} ${r.body.toString().slice(0, 200)}` };
          const json = JSON.parse(r.body.toString()) as { data: Array<{ b64_json: string }>; meta: { fal_request_id: string } };
          const b64 = json.data[0]!.b64_json;
          const size = pngSize(b64);
          if (!size || size[0] !== 2048 || size[1] !== 2048) return { error: `not a 2048×2048 PNG: ${JSON.stringify(size)}` };
          return { b64Bytes: b64.length, responseBytes: r.body.length, doneAt: r.doneAtWallMs, ms: r.endedAt - r.startedAt };
        } catch (err) {
          return { error: (err as Error).message };
        }
      }),
    );
    const wallS = (performance.now() - t0) / 1000;
    sampler.stop();
    const peakRss = readMem(svc.pid).hwm;
    const ok = results.filter((r): r is Exclude<typeof r, { error: string }> => !('error' in r));
    const f: KFigures = {
      k,
      ok: ok.length,
      errors: results.flatMap((r) => ('error' in r ? [r.error] : [])),
      idleRss,
      peakRss,
      b64Bytes: ok.length ? ok.reduce((s, r) => s + r.b64Bytes, 0) / ok.length : Number.NaN,
      responseBytes: ok.length ? ok.reduce((s, r) => s + r.responseBytes, 0) / ok.length : Number.NaN,
      spreadS: ok.length ? (Math.max(...ok.map((r) => r.doneAt)) - Math.min(...ok.map((r) => r.doneAt))) / 1000 : Number.NaN,
      latency: summarize(ok.map((r) => r.ms)),
      wallS,
    };
    const per = (f.peakRss - f.idleRss) / k;
    log(`k=${k}: ${f.ok}/${k} ok in ${wallS.toFixed(1)} s; RSS ${mib(idleRss)} → peak ${mib(peakRss)}; ${mib(per)} per response = ${fixed(per / f.b64Bytes)}× its base64 (${mib(f.b64Bytes)}); answers spread over ${f.spreadS.toFixed(1)} s`);
    return f;
  } finally {
    agent.destroy();
    await svc.stop(30_000);
    await data.remove();
  }
}

/** Small sizes in KiB, the rest in MiB. */
function amount(bytes: number): string {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : mib(bytes);
}

function render(all: KFigures[], copies: CopyReport | undefined, startedAt: Date, machine: ReturnType<typeof describeMachine>, seconds: number): string {
  const rows = all.map((f) => {
    const per = (f.peakRss - f.idleRss) / f.k;
    const r = per / f.b64Bytes;
    return [
      String(f.k),
      `${f.ok}/${f.k}`,
      mib(f.b64Bytes),
      mib(f.idleRss),
      `**${mib(f.peakRss)}**`,
      mib(f.peakRss - f.idleRss),
      mib(per),
      `**${fixed(r)}×**`,
      f.k === 1 ? (r <= TARGET ? 'met' : `**missed** (+${fixed(r - TARGET)}×)`) : '',
      f.spreadS.toFixed(1),
      ms(f.latency.p50),
      ms(f.latency.max),
    ];
  });
  const singles = all.filter((f) => f.k === 1 && f.ok === 1).map((f) => (f.peakRss - f.idleRss) / f.b64Bytes);
  const headline = median(singles);
  const fifty = all.find((f) => f.k === 50);
  const errorLines = all.flatMap((f) => f.errors.map((e) => `- k=${f.k}: ${e}`));
  const out = [
    `Run: \`npx tsx bench/big-images.ts${args.quick ? ' --quick' : ''}\` on ${startedAt.toISOString().slice(0, 10)} (${Math.round(seconds)} s).`,
    '',
    machineLine(machine, Math.round(os.loadavg()[0]! * 100) / 100),
    '',
    `Setup: emulator and service as separate processes on 127.0.0.1; emulator in **entropy** image mode (per-image noise, realistic PNG sizes), 1 s per job; ` +
      `request \`{"model":"alibaba/z-image-turbo","size":"${SIZE}","response_format":"b64_json"}\` (PNG), which the service sends to fal with \`sync_mode: true\`, so fal's result carries the image as a data URI. ` +
      `A fresh service process per k (defaults, SQLite ledger, \`DEFAULT_RPM_LIMIT=0\`), three small warm-up requests, then its VmHWM reset to its RSS (\`/proc/<pid>/clear_refs\`; before, the peak of the process's start, ~30 MiB above idle, was counted too); ` +
      `k requests at the same instant; every answer checked to be a 2048×2048 PNG.`,
    '',
    `**Peak memory per in-flight answer: ${fixed(headline)}× its base64 size** (median of ${singles.length} fresh processes with one answer each, range ${fixed(Math.min(...singles))}–${fixed(Math.max(...singles))}×; target ≤ ${TARGET}×: ` +
      `${headline <= TARGET ? 'met' : `**missed by ${fixed(headline - TARGET)}×**`}). ` +
      (fifty ? `50 at once: ${fifty.ok}/50 answered, peak RSS **${mib(fifty.peakRss)}** (${mib(fifty.peakRss - fifty.idleRss)} above idle) on a ${machine.memoryGiB} GiB machine.` : ''),
    '',
    table(['k', 'ok', 'base64 per image', 'RSS before', 'peak RSS (VmHWM)', 'peak − before', '÷ k', '÷ k ÷ base64', `target ≤ ${TARGET}× (k = 1)`, 'answers spread over s', 'latency p50 ms', 'max ms'], rows),
    '',
    '*answers spread over*: last answer − first answer at the client. The emulator renders each 4-megapixel PNG when its result is asked for, a few at a time on this machine, ' +
      'so with k above 1 the answers pass through the service staggered and *÷ k* understates what one answer costs; k = 1 is the per-answer figure.',
  ];
  if (copies) {
    const total = copies.steps.reduce((a, s) => a + s.bytes, 0);
    const kept = copies.steps[1]!.bytes;
    out.push(
      '',
      `**Where the memory goes** (one ${SIZE} answer, fetched from the emulator the way the service fetches it and put through the service's own code in this process: ` +
        `src/fal/inline-images.ts, the fal client's \`response.json()\`, src/images/b64-item.ts, src/http/images-json.ts; sizes are what each step allocates, "live until" says how long the service keeps it)`,
      '',
      table(
        ['step', 'allocates', '× base64', 'live until'],
        copies.steps.map((s) => [s.step, amount(s.bytes), fixed(s.bytes / copies.b64Bytes), s.liveUntil]),
      ),
      '',
      `Every answer allocates ${fixed(total / copies.b64Bytes)}× its base64 size; one copy of fal's result body (${fixed(kept / copies.b64Bytes)}×: the base64 plus the rest of fal's JSON) ` +
        `stays live until the answer is written, the socket reads are garbage a collection returns, and the rest is a few KiB. The image is never a string: it goes from fal's socket to the caller's as the same Buffers. ` +
        `Checked against the kernel in this process (VmHWM reset, then read): reading the body through undici's fetch raised the peak by ${mib(copies.peak.read)} (${fixed(copies.peak.read / copies.b64Bytes)}×), ` +
        `cutting the image out and laying out the answer by ${mib(Math.max(0, copies.peak.rest))} more. ` +
        `Before this path (issue 6) the same answer allocated 6 copies (undici's chunks, Buffer.concat, a UTF-8 string, JSON.parse, Express's JSON.stringify and Buffer.from), two of them live until the client had read it.`,
    );
  }
  out.push(...(errorLines.length ? ['', '**Errors**', '', ...errorLines] : ['', 'Errors: none.']));
  return out.join('\n');
}

const INTRO = `\`\`\`sh
npx tsx bench/big-images.ts            # k = 1 (five times), 2, 5, 10, 25, 50; about 5 minutes
npx tsx bench/big-images.ts --quick    # k = 1 (twice), 5, 50
\`\`\`

Issue 6: \`b64_json\` for 4-megapixel high-entropy images; peak memory per in-flight response at most 2.5× its
base64 size; 50 at once do not exhaust memory.`;

async function main(): Promise<void> {
  const machine = describeMachine();
  const startedAt = new Date();
  const dir = await tempDir('gw-big-');
  const emu = await startEmulatorProcess(dir.path, { EMULATOR_LATENCY_MS: '1000', EMULATOR_IMAGE_MODE: 'entropy', EMULATOR_CONCURRENCY: BENCH_FAL_CONCURRENCY });
  const all: KFigures[] = [];
  let copies: CopyReport | undefined;
  try {
    // First, while this process is fresh: after the k runs its heap holds
    // freed pages that a new read reuses without raising the peak.
    copies = await measureCopies(emu.url, SIZE);
    for (const [i, k] of KS.entries()) all.push(await runK(k, i + 1, emu, dir.path));
  } finally {
    await emu.stop();
    if (process.env.BENCH_KEEP) log(`logs kept in ${dir.path}`);
    else await dir.remove();
  }
  const text = render(all, copies, startedAt, machine, (Date.now() - startedAt.getTime()) / 1000);
  process.stdout.write(`\n${text}\n`);
  if (!args['no-write']) {
    await writeSection('big-images', 'Big images: b64_json at 4 megapixels (issue 6)', INTRO, text);
    log('wrote bench/README.md');
  }
}

await main();
