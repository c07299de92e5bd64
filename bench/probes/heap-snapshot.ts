import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * What a V8 heap snapshot holds, by kind of object: count and self size per
 * constructor (or per "(closure)", "(string)", …, as DevTools groups them).
 * Two snapshots of one process, idle and with N jobs waiting, divided by N,
 * say what one waiting job keeps alive. A snapshot is taken after a full
 * collection, so garbage is not in it.
 *
 * The file is parsed as a stream: a snapshot of a few hundred MB of heap is
 * larger than the longest string V8 can hold, so JSON.parse cannot read it.
 * Only the nodes (objects) and the strings table are read; edges are skipped.
 */

export type HeapSummary = Map<string, { count: number; size: number }>;

export async function summarizeSnapshot(file: string): Promise<{ summary: HeapSummary; totalSize: number; nodes: number }> {
  let header = '';
  let phase: 'header' | 'nodes' | 'seek-strings' | 'strings' | 'done' = 'header';
  let fields: string[] = [];
  let types: string[] = [];
  let fieldCount = 0;
  let typeAt = 0;
  let nameAt = 0;
  let sizeAt = 0;
  // Only three fields per node are kept: type, name (a string index), self size.
  let kept = new Uint32Array(0);
  let nodeCount = 0;
  let field = 0;
  let num = '';
  let carry = '';
  const strings: string[] = [];
  let str = '';
  let inString = false;
  let escaped = false;
  let hasEscape = false;

  const pushNumber = () => {
    if (num === '') return;
    const v = Number(num);
    num = '';
    const f = field % fieldCount;
    const node = Math.floor(field / fieldCount);
    if (node * 3 + 2 >= kept.length) {
      const bigger = new Uint32Array(Math.max(1024, kept.length * 2));
      bigger.set(kept);
      kept = bigger;
    }
    if (f === typeAt) kept[node * 3] = v;
    else if (f === nameAt) kept[node * 3 + 1] = v;
    else if (f === sizeAt) kept[node * 3 + 2] = v;
    field++;
  };

  for await (const chunk of createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 20 })) {
    let text = carry + (chunk as string);
    carry = '';
    let i = 0;
    if (phase === 'header') {
      header += text;
      const at = header.indexOf('"nodes":[');
      if (at < 0) continue;
      const meta = JSON.parse(`${header.slice(0, header.lastIndexOf(',', at))}}`) as { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } } };
      fields = meta.snapshot.meta.node_fields;
      types = meta.snapshot.meta.node_types[0];
      fieldCount = fields.length;
      typeAt = fields.indexOf('type');
      nameAt = fields.indexOf('name');
      sizeAt = fields.indexOf('self_size');
      text = header.slice(at + '"nodes":['.length);
      header = '';
      phase = 'nodes';
    }
    if (phase === 'nodes') {
      for (; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c >= 48 && c <= 57) num += text[i];
        else if (c === 93 /* ] */) {
          pushNumber();
          nodeCount = field / fieldCount;
          phase = 'seek-strings';
          i++;
          break;
        } else pushNumber();
      }
      if (phase === 'nodes') continue;
      text = text.slice(i);
      i = 0;
    }
    if (phase === 'seek-strings') {
      const at = text.indexOf('"strings":[');
      if (at < 0) {
        // The marker may straddle two chunks.
        carry = text.slice(-16);
        continue;
      }
      text = text.slice(at + '"strings":['.length);
      phase = 'strings';
    }
    if (phase === 'strings') {
      for (; i < text.length; i++) {
        const ch = text[i]!;
        if (!inString) {
          if (ch === '"') {
            inString = true;
            str = '';
            hasEscape = false;
          } else if (ch === ']') {
            phase = 'done';
            break;
          }
          continue;
        }
        if (escaped) {
          escaped = false;
          str += ch;
        } else if (ch === '\\') {
          escaped = true;
          hasEscape = true;
          str += ch;
        } else if (ch === '"') {
          inString = false;
          strings.push(hasEscape ? (JSON.parse(`"${str}"`) as string) : str);
        } else str += ch;
      }
    }
    if (phase === 'done') break;
  }

  const summary: HeapSummary = new Map();
  let totalSize = 0;
  for (let n = 0; n < nodeCount; n++) {
    const type = types[kept[n * 3]!] ?? '?';
    const name = strings[kept[n * 3 + 1]!] ?? '?';
    const size = kept[n * 3 + 2]!;
    totalSize += size;
    const key = type === 'object' || type === 'native' ? name : type === 'hidden' && name.startsWith('system /') ? `(${name})` : `(${type})`;
    const e = summary.get(key) ?? { count: 0, size: 0 };
    e.count++;
    e.size += size;
    summary.set(key, e);
  }
  return { summary, totalSize, nodes: nodeCount };
}

/** The rows that grew most from `before` to `after`, per job. */
export function perJobGrowth(before: HeapSummary, after: HeapSummary, jobs: number, top = 15): Array<{ key: string; countPerJob: number; bytesPerJob: number }> {
  const rows = [...after].map(([key, a]) => {
    const b = before.get(key) ?? { count: 0, size: 0 };
    return { key, countPerJob: (a.count - b.count) / jobs, bytesPerJob: (a.size - b.size) / jobs };
  });
  return rows.sort((x, y) => y.bytesPerJob - x.bytesPerJob).slice(0, top);
}

/**
 * Asks a process started with --heapsnapshot-signal=SIGUSR2 and
 * --diagnostic-dir=<dir> for a snapshot, and waits until the file is whole:
 * Node writes it synchronously, so the process answers HTTP again only once
 * it is done.
 */
export async function takeSnapshot(pid: number, dir: string, alive: () => Promise<unknown>): Promise<string> {
  const before = new Set(await readdir(dir));
  process.kill(pid, 'SIGUSR2');
  for (let i = 0; i < 600; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const fresh = (await readdir(dir)).filter((f) => f.endsWith('.heapsnapshot') && !before.has(f));
    if (fresh.length === 0) continue;
    await alive();
    const file = join(dir, fresh[0]!);
    // One more look: the size must have stopped changing.
    const s1 = (await stat(file)).size;
    await new Promise((r) => setTimeout(r, 500));
    if ((await stat(file)).size === s1) return file;
  }
  throw new Error(`no heap snapshot from pid ${pid} in ${dir}`);
}
