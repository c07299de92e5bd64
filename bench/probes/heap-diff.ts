/**
 * What N waiting jobs keep alive, object by object: two heap snapshots of
 * one process (idle, then with N jobs waiting), and the objects of the second
 * whose ids the first does not have. V8 keeps an object's id for the life of
 * the process, so "new" means allocated since the first snapshot and alive in
 * the second (both are taken after a full collection).
 *
 * Each new object is charged to a label: its own constructor or function
 * name, and for the anonymous kinds (arrays, contexts, plain objects) the
 * object that holds it and under which edge name, which is what says whose
 * it is.
 *
 *   npx tsx bench/probes/heap-diff.ts IDLE.heapsnapshot PLATEAU.heapsnapshot JOBS [TOP]
 *
 * Snapshots of up to a few hundred MB only (the file is parsed whole); get them
 * with `npx tsx bench/waiting.ts --diagnostics-only --keep-snapshots=DIR`.
 */
import { readFileSync } from 'node:fs';

interface Snap {
  strings: string[];
  nodeFields: number;
  edgeFields: number;
  nodes: number[];
  edges: number[];
  nodeTypes: string[];
  edgeTypes: string[];
  firstEdge: Uint32Array;
  where: Map<number, string>;
}

function load(file: string): Snap {
  const raw = JSON.parse(readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; edge_fields: string[]; node_types: [string[]]; edge_types: [string[]] } };
    nodes: number[];
    edges: number[];
    strings: string[];
    locations?: number[];
  };
  const meta = raw.snapshot.meta;
  const nodeFields = meta.node_fields.length;
  const edgeFields = meta.edge_fields.length;
  const count = raw.nodes.length / nodeFields;
  const firstEdge = new Uint32Array(count + 1);
  const ec = meta.node_fields.indexOf('edge_count');
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e;
    e += raw.nodes[i * nodeFields + ec]! * edgeFields;
    firstEdge[i + 1] = e;
  }
  // Where each function was written (script id, line, column), to tell anonymous closures apart.
  const where = new Map<number, string>();
  const loc = raw.locations ?? [];
  for (let i = 0; i + 3 < loc.length; i += 4) where.set(loc[i]! / nodeFields, `@${loc[i + 1]}:${loc[i + 2]! + 1}`);
  return { strings: raw.strings, nodeFields, edgeFields, nodes: raw.nodes, edges: raw.edges, nodeTypes: meta.node_types[0], edgeTypes: meta.edge_types[0], firstEdge, where };
}

const [idleFile, plateauFile, jobsArg, topArg] = process.argv.slice(2);
if (!idleFile || !plateauFile || !jobsArg) {
  console.error('usage: heap-diff IDLE PLATEAU JOBS [TOP]');
  process.exit(2);
}
const jobs = Number(jobsArg);
const top = Number(topArg ?? 40);

const idle = load(idleFile);
const idleIds = new Set<number>();
for (let i = 0; i < idle.nodes.length; i += idle.nodeFields) idleIds.add(idle.nodes[i + 2]!);
(idle as Partial<Snap>).nodes = undefined;

const s = load(plateauFile);
const F = s.nodeFields;
const count = s.nodes.length / F;
const type = (n: number) => s.nodeTypes[s.nodes[n * F]!]!;
const name = (n: number) => s.strings[s.nodes[n * F + 1]!]!;
const id = (n: number) => s.nodes[n * F + 2]!;
const size = (n: number) => s.nodes[n * F + 3]!;

// Retainers: the first strong retainer of each node, with the edge's name.
const retainer = new Int32Array(count).fill(-1);
const retEdge = new Array<string>(count);
for (let n = 0; n < count; n++) {
  for (let e = s.firstEdge[n]!; e < s.firstEdge[n + 1]!; e += s.edgeFields) {
    const et = s.edgeTypes[s.edges[e]!]!;
    if (et === 'weak' || et === 'shortcut') continue;
    const to = s.edges[e + 2]! / F;
    if (retainer[to] !== -1) continue;
    retainer[to] = n;
    const nameOrIndex = s.edges[e + 1]!;
    retEdge[to] = et === 'element' || et === 'hidden' ? `[${et}]` : s.strings[nameOrIndex]!;
  }
}

function label(n: number): string {
  const t = type(n);
  const nm = name(n);
  if (t === 'closure') return `closure ${nm || '(anonymous)'}${nm ? '' : (s.where.get(n) ?? '')}`;
  if (t === 'object' && nm !== 'Object' && nm !== 'Array') return nm;
  if (t === 'code' || t === 'string' || t === 'number' || t === 'concatenated string' || t === 'sliced string') return `(${t})`;
  return `${t === 'object' ? nm : `(${t}) ${nm}`.slice(0, 60)}`;
}

/** An anonymous node is described by who holds it (up to two steps up). */
function owner(n: number, steps = 3): string {
  const parts: string[] = [];
  let cur = n;
  for (let step = 0; step < steps; step++) {
    const r = retainer[cur]!;
    if (r < 0) break;
    parts.push(`${label(r)}.${retEdge[cur]}`);
    const rt = type(r);
    const rn = name(r);
    if (steps <= 3 && (rt === 'closure' || (rt === 'object' && rn !== 'Object' && rn !== 'Array' && rn !== 'system / Context'))) break;
    cur = r;
  }
  return parts.join(' < ');
}

const byLabel = new Map<string, { count: number; size: number }>();
const byOwner = new Map<string, { count: number; size: number }>();
let total = 0;
let totalCount = 0;
for (let n = 0; n < count; n++) {
  if (idleIds.has(id(n))) continue;
  const sz = size(n);
  total += sz;
  totalCount++;
  const l = label(n);
  const a = byLabel.get(l) ?? { count: 0, size: 0 };
  a.count++;
  a.size += sz;
  byLabel.set(l, a);
  const o = `${l.slice(0, 50)}  ⟵  ${owner(n)}`;
  const b = byOwner.get(o) ?? { count: 0, size: 0 };
  b.count++;
  b.size += sz;
  byOwner.set(o, b);
}

const fmt = (m: Map<string, { count: number; size: number }>) =>
  [...m]
    .sort((x, y) => y[1].size - x[1].size)
    .slice(0, top)
    .map(([k, v]) => `${(v.size / jobs).toFixed(0).padStart(6)} B ${(v.count / jobs).toFixed(2).padStart(7)}/job  ${k}`)
    .join('\n');

console.log(`new objects alive: ${totalCount} (${(totalCount / jobs).toFixed(1)}/job), ${(total / 1024 / 1024).toFixed(1)} MiB, ${(total / jobs / 1024).toFixed(2)} KiB per job\n`);
console.log(`by object:\n${fmt(byLabel)}\n`);
console.log(`by object and holder:\n${fmt(byOwner)}`);

// HEAP_DIFF_SHOW=<substring of a label>: one such new object's edges, and its holders, to tell what it is.
const show = process.env.HEAP_DIFF_SHOW;
if (show) {
  for (let n = 0; n < count; n++) {
    if (idleIds.has(id(n)) || !label(n).includes(show)) continue;
    const out: string[] = [];
    for (let e = s.firstEdge[n]!; e < s.firstEdge[n + 1]!; e += s.edgeFields) {
      const et = s.edgeTypes[s.edges[e]!]!;
      const to = s.edges[e + 2]! / F;
      const nm = et === 'element' || et === 'hidden' ? `[${s.edges[e + 1]}]` : s.strings[s.edges[e + 1]!];
      out.push(`  ${et} ${nm} → ${label(to)}${type(to) === 'string' ? ` "${name(to).slice(0, 80)}"` : ''}`);
    }
    console.log(`\n${label(n)} (id ${id(n)}), held by: ${owner(n, 12)}\n${out.slice(0, 40).join('\n')}`);
    break;
  }
}
