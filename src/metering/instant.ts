const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$/i;

export const INSTANT_HINT = 'an ISO 8601 date or date-time, such as 2025-01-31 or 2025-01-31T12:00:00Z';

function isLeap(y: number): boolean {
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
}

/**
 * An ISO 8601 date or date-time as an exact instant, or null when `text` is
 * not one. Written out rather than left to `Date`, which rolls 2024-02-30
 * over into March and reads a date-time without offset as local time; here
 * a missing offset means UTC, so the same usage query means the same period
 * on every server and in the CLI.
 */
export function parseInstant(text: string): Date | null {
  const m = ISO_8601.exec(text);
  if (!m) return null;
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? '0')) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  if (month < 1 || month > 12) return null;
  const lastDay = month === 2 ? (isLeap(year) ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31;
  if (day < 1 || day > lastDay || hour > 23 || minute > 59 || second > 59) return null;
  const offset = (m[8] ?? 'Z').toUpperCase();
  let offsetMinutes = 0;
  if (offset !== 'Z') {
    const digits = offset.slice(1).replace(':', '');
    const oh = Number(digits.slice(0, 2));
    const om = Number(digits.slice(2));
    if (oh > 23 || om > 59) return null;
    offsetMinutes = (offset.startsWith('-') ? -1 : 1) * (oh * 60 + om);
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  const base = Date.parse(`${m[1]}-${m[2]}-${m[3]}T${pad(hour)}:${pad(minute)}:${pad(second)}.000Z`);
  // Settlement times are stored to the millisecond. Rounding a finer bound
  // up keeps both comparisons exact: t >= from ⇔ t >= ceil(from), and
  // t < to ⇔ t < ceil(to), for any whole-millisecond t.
  const fraction = m[7] ?? '';
  const ms = Number(fraction.padEnd(3, '0').slice(0, 3)) + (/[1-9]/.test(fraction.slice(3)) ? 1 : 0);
  const at = base + ms - offsetMinutes * 60_000;
  if (Number.isNaN(at)) return null;
  const date = new Date(at);
  // The ledger compares fixed-width strings; instants outside years 0000-9999 do not fit.
  return date.toISOString().length === 24 ? date : null;
}
