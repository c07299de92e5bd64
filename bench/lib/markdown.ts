/** Markdown tables and number formats shared by bench scripts. */

export function table(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Milliseconds with a precision that matches what loopback timings can support. */
export function ms(v: number): string {
  if (!Number.isFinite(v)) return '–';
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function signedMs(v: number): string {
  if (!Number.isFinite(v)) return '–';
  return `${v >= 0 ? '+' : '−'}${ms(Math.abs(v))}`;
}

export function rate(v: number): string {
  return Number.isFinite(v) ? v.toFixed(0) : '–';
}

export function ratio(v: number): string {
  return Number.isFinite(v) ? v.toFixed(2) : '–';
}

export function fixed(v: number, digits = 2): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '–';
}
