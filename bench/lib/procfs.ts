import { readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';

/**
 * Another process's memory and sockets, read from /proc (Linux only). The
 * kernel's view, so it counts what the process really holds: V8's heap,
 * Buffers outside it, native allocations, thread stacks.
 */

export interface Mem {
  /** Resident set now, bytes. */
  rss: number;
  /** Highest resident set since the process started, bytes. */
  hwm: number;
}

export function readMem(pid: number): Mem {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
  };
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

/**
 * Sets the process's VmHWM back to its current RSS (Linux ≥ 4.0, writing "5"
 * to clear_refs; allowed for our own children). Without it VmHWM is the peak
 * since the process started, and a Node service's start (module loading,
 * compiling, migrations) can peak tens of MiB above its later idle RSS.
 */
export function resetPeak(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/** CPU time the process has used so far (user + system), ms. */
export function readCpuMs(pid: number): number {
  // Fields after the command name, which may itself hold spaces and parentheses.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(rest[11]) + Number(rest[12]);
  return (ticks / 100) * 1000;
}

/**
 * Samples RSS at a fixed interval. VmHWM alone gives the peak but not when
 * it happened, nor the plateau; the samples give both.
 */
export class MemSampler {
  readonly samples: Array<{ atMs: number; rss: number }> = [];
  peakRss = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly pid: number,
    readonly intervalMs = 250,
  ) {}

  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    return this;
  }

  sample(): Mem | undefined {
    try {
      const m = readMem(this.pid);
      this.samples.push({ atMs: Date.now(), rss: m.rss });
      this.peakRss = Math.max(this.peakRss, m.rss);
      return m;
    } catch {
      return undefined; // the process is gone; its last samples stand
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Median RSS of the samples taken between two instants (Date.now() clock). */
  medianBetween(fromMs: number, toMs: number): number {
    const v = this.samples.filter((s) => s.atMs >= fromMs && s.atMs <= toMs).map((s) => s.rss).sort((a, b) => a - b);
    return v.length ? v[Math.floor(v.length / 2)]! : Number.NaN;
  }
}

export interface Sockets {
  /** Every open file descriptor. */
  fds: number;
  /** TCP sockets whose local port is `listenPort`: callers connected to us (and the listener itself). */
  inbound: number;
  /** TCP sockets connected to one of `upstreamPorts`, by port. */
  upstream: Record<number, number>;
  /** Any other socket (Redis, PostgreSQL, unix sockets, …). */
  other: number;
}

/**
 * Classifies a process's sockets by joining its fd table (socket inodes) with
 * the kernel's TCP table (inode → ports), so "waiting does not hold one
 * upstream socket per job" is shown directly rather than inferred from a total.
 */
export function readSockets(pid: number, listenPort: number, upstreamPorts: readonly number[]): Sockets {
  const inodes: string[] = [];
  let fds = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    fds++;
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.push(m[1]!);
    } catch {
      // closed between readdir and readlink
    }
  }
  const byInode = new Map<string, { local: number; remote: number }>();
  for (const table of [`/proc/${pid}/net/tcp`, `/proc/${pid}/net/tcp6`]) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const port = (addr: string) => parseInt(addr.split(':')[1]!, 16);
      byInode.set(f[9]!, { local: port(f[1]!), remote: port(f[2]!) });
    }
  }
  const out: Sockets = { fds, inbound: 0, upstream: Object.fromEntries(upstreamPorts.map((p) => [p, 0])), other: 0 };
  for (const inode of inodes) {
    const t = byInode.get(inode);
    if (t && t.local === listenPort) out.inbound++;
    else if (t && upstreamPorts.includes(t.remote)) out.upstream[t.remote]!++;
    else out.other++;
  }
  return out;
}

export function portOf(url: string): number {
  return Number(new URL(url).port);
}

/**
 * The kernel's count of connections dropped because a listener's accept
 * queue was full (TcpExt ListenOverflows). Machine-wide: on a shared machine
 * another process's listener may add to it, so a bench reports the change
 * over its own window next to what it saw itself.
 */
export function listenOverflows(): number {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      if (!lines[i]!.startsWith('TcpExt:')) continue;
      const names = lines[i]!.split(/\s+/);
      const values = lines[i + 1]!.split(/\s+/);
      const k = names.indexOf('ListenOverflows');
      if (k > 0) return Number(values[k]);
    }
  } catch {
    // not Linux
  }
  return Number.NaN;
}

/** CPU time of the whole machine so far, ms summed over CPUs: busy (all but idle and iowait) and total. */
export function readMachineCpu(): { busyMs: number; totalMs: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = f[3]! + f[4]!;
  return { busyMs: ((total - idle) / 100) * 1000, totalMs: (total / 100) * 1000 };
}

/** CPU ms used so far by every process on the machine, with its command name. */
export function readAllCpu(): Map<number, { comm: string; ms: number }> {
  const out = new Map<number, { comm: string; ms: number }>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(d), { comm, ms: ((Number(rest[11]) + Number(rest[12])) / 100) * 1000 });
    } catch {
      // exited while we looked
    }
  }
  return out;
}

/**
 * CPU each process used between two readAllCpu() snapshots. A process born in
 * between counts from zero; one that exited in between is missing (its last
 * slice of CPU then shows as the machine's unattributed time).
 */
export function cpuDeltas(before: Map<number, { comm: string; ms: number }>, after: Map<number, { comm: string; ms: number }>): Array<{ pid: number; comm: string; ms: number }> {
  const out: Array<{ pid: number; comm: string; ms: number }> = [];
  for (const [pid, a] of after) {
    const b = before.get(pid);
    const ms = b && b.comm === a.comm ? a.ms - b.ms : a.ms;
    if (ms > 0) out.push({ pid, comm: a.comm, ms });
  }
  return out;
}
