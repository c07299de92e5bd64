/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`) by where the time
 * went: our folders under src/, each npm package, Node internals, GC. Meant
 * for benchmark runs, where the question is "which layer", not "which line".
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

function summarizeProfile(p: Profile): { totalMs: number; groups: Map<string, number>; functions: Map<string, number> } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const groups = new Map<string, number>();
  const functions = new Map<string, number>();
  let totalMs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]!);
    if (!node) continue;
    const ms = (p.timeDeltas[i] ?? 0) / 1000;
    totalMs += ms;
    const { url, functionName, lineNumber } = node.callFrame;
    const g = groupOf(url, functionName);
    groups.set(g, (groups.get(g) ?? 0) + ms);
    const f = `${functionName || '(anonymous)'} ${url ? `${url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${lineNumber + 1}` : ''}`.trim();
    functions.set(f, (functions.get(f) ?? 0) + ms);
  }
  return { totalMs, groups, functions };
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
  console.log(table(['self time in', 'ms', 'of busy'], rows(s.groups)));
  console.log('');
  console.log(table(['function', 'ms', 'of busy'], rows(s.functions)));
}

await main();
