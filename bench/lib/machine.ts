import { readFileSync } from 'node:fs';
import os from 'node:os';

/** What a figure was measured on: results from different machines are not comparable. */
export interface Machine {
  date: string;
  nproc: number;
  cpuModel: string;
  node: string;
  memoryGiB: number;
  kernel: string;
  /** 1-minute load average when described: other tenants of a shared machine show up here. */
  loadAverage: number;
}

export function describeMachine(): Machine {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    if (line) cpuModel = line.split(':').slice(1).join(':').trim();
  } catch {
    // not Linux: os.cpus() is the best we have
  }
  return {
    date: new Date().toISOString(),
    nproc: os.availableParallelism(),
    cpuModel,
    node: process.version,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: Math.round(os.loadavg()[0]! * 100) / 100,
  };
}
