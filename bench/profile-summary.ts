/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`, or
 * `bench/overhead.ts --profile`) by where the time went: our folders under
 * src/, each npm package, Node internals, GC, and by coarse layer. Meant for
 * benchmark runs, where the question is "which layer", not "which line".
 * Native frames (SQLite's run/prepare, socket writes) are charged to the
 * nearest JavaScript caller, so better-sqlite3's time shows up as the ledger's.
 *
 *   npx tsx bench/profile-summary.ts <file.cpuprofile> [--top=25]
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { table } from './lib/markdown.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function groupOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm:${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/').slice(0, 2).join('/')}`;
  const src = url.match(/\/(src|bench|test)\/(.*)$/);
  if (src) {
    const parts = src[2]!.split('/');
    return `${src[1]}/${parts.length > 1 ? parts[0] : parts[0]!.replace(/\.[mc]?[jt]s$/, '')}`;
  }
  return url;
}

/** Coarse layers, first match wins; anything else is "other". */
const LAYERS: Array<[string, RegExp]> = [
  ['ledger: kysely, better-sqlite3, src/db, src/metering', /^(npm:kysely|npm:better-sqlite3|src\/db|src\/metering)$/],
  ['fal client and gateway (both paths)', /^(npm:@fal-ai\/client|npm:eventsource-parser|src\/fal)$/],
  ['emulator (both paths)', /^src\/emulator$/],
  ['HTTP client: undici, web streams', /^(npm:undici|node:internal\/deps|node:internal\/webstreams|node:internal\/worker|wasm:.*)$/],
  ['HTTP server: node:http, express, middleware', /^(node:_http_.*|node:net|node:internal\/stream.*|node:internal\/streams|npm:express|npm:router|npm:body-parser|npm:raw-body|npm:helmet|npm:finalhandler|npm:send|npm:qs|npm:content-type|npm:type-is|npm:media-typer|npm:mime-types|npm:statuses|npm:on-finished|npm:depd|src\/http)$/],
  ['service logic: validation, pricing, responses', /^(npm:ajv|npm:ajv-formats|npm:fast-uri|npm:fast-deep-equal|src\/images|src\/models|src\/schemas|src\/errors|src\/app|src\/service)$/],
  ['logs, metrics, rate limits', /^(npm:pino.*|npm:sonic-boom|npm:prom-client|npm:rate-limiter-flexible|npm:fast-redact|npm:quick-format-unescaped)$/],
  ['the profiler itself', /^node:inspector$/],
  ['promises, AsyncLocalStorage, timers, events', /^(node:internal\/async_hooks|node:async_hooks|node:internal\/process|node:internal\/timers|node:timers|node:events|node:internal\/event_target|node:internal\/abort_controller|\(native\))$/],
  ['garbage collector', /^\(garbage collector\)$/],
];

function layerOf(group: string): string {
  for (const [name, re] of LAYERS) if (re.test(group)) return name;
  return 'other';
}

function summarizeProfile(p: Profile): { totalMs: number; groups: Map<string, number>; layers: Map<string, number>; functions: Map<string, number> } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // A native frame (empty url, plain name) is charged to its nearest caller with a url.
  const owner = (node: ProfileNode): ProfileNode => {
    let cur: ProfileNode | undefined = node;
    while (cur && !cur.callFrame.url && !cur.callFrame.functionName.startsWith('(')) {
      const up = parent.get(cur.id);
      cur = up === undefined ? undefined : byId.get(up);
    }
    return cur ?? node;
  };
  const layers = new Map<string, number>();
  const groups = new Map<string, number>();
  const functions = new Map<string, number>();
  let totalMs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]!);
    if (!node) continue;
    const ms = (p.timeDeltas[i] ?? 0) / 1000;
    totalMs += ms;
    const { url, functionName, lineNumber } = node.callFrame;
    const o = owner(node).callFrame;
    const g = groupOf(o.url, o.functionName);
    groups.set(g, (groups.get(g) ?? 0) + ms);
    const l = g === '(idle)' ? g : layerOf(g);
    layers.set(l, (layers.get(l) ?? 0) + ms);
    const f = `${functionName || '(anonymous)'} ${url ? `${url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${lineNumber + 1}` : ''}`.trim();
    functions.set(f, (functions.get(f) ?? 0) + ms);
  }
  return { totalMs, groups, layers, functions };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ options: { top: { type: 'string', default: '25' } }, allowPositionals: true });
  const file = positionals[0];
  if (!file) throw new Error('usage: profile-summary <file.cpuprofile> [--top=N]');
  const top = Number(values.top);
  const s = summarizeProfile(JSON.parse(await readFile(file, 'utf8')) as Profile);
  const busy = s.totalMs - (s.groups.get('(idle)') ?? 0);
  const rows = (m: Map<string, number>) =>
    [...m]
      .filter(([k]) => k !== '(idle)')
      .sort((x, y) => y[1] - x[1])
      .slice(0, top)
      .map(([k, v]) => [k, v.toFixed(0), `${((v / busy) * 100).toFixed(1)}%`]);
  console.log(`profile: ${(s.totalMs / 1000).toFixed(1)} s sampled, ${(busy / 1000).toFixed(1)} s not idle\n`);
  console.log(table(['layer', 'ms', 'of busy'], rows(s.layers)));
  console.log('');
  console.log(table(['self time in', 'ms', 'of busy'], rows(s.groups)));
  console.log('');
  console.log(table(['function', 'ms', 'of busy'], rows(s.functions)));
}

await main();
