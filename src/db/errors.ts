/**
 * Which storage failures mean "the database cannot be reached or cannot take
 * work right now" (so the caller may retry later and readiness should tell)
 * rather than "the database answered and refused this statement" (a fault of
 * ours or data we should have refused at the edge, which a retry repeats).
 *
 * Unavailable, by what the drivers report:
 * - the network: connection refused, reset, timed out, name not resolved;
 * - pg: the pool's connect timeout, a connection lost or closed under us,
 *   the pool ended (shutdown); SQLSTATE classes 08 (connection exception),
 *   53 (insufficient resources: disk full, out of memory, too many
 *   connections), 57P (server shutting down or starting), 58 (I/O error),
 *   and the transient refusals 40001 / 40P01 (serialization, deadlock),
 *   55P03 (lock not available) and 57014 (statement timeout);
 * - SQLite: busy or locked, disk full, I/O errors, cannot open, read-only
 *   storage, out of memory; a connection closed under us;
 * - Kysely: the driver destroyed (the process is shutting down).
 *
 * Everything else (a constraint violated, a value refused, a syntax error, a
 * bug) is not unavailability.
 */

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN']);

const PG_TRANSIENT_STATES = new Set(['40001', '40P01', '55P03', '57014', '57P01', '57P02', '57P03', '57P04', '57P05']);
const PG_UNAVAILABLE_CLASSES = new Set(['08', '53', '58']);

const SQLITE_UNAVAILABLE = /^SQLITE_(?:BUSY|LOCKED|FULL|IOERR|CANTOPEN|READONLY|NOMEM|PROTOCOL)(?:_|$)/;

/** Drivers' own words for a connection that is gone or never came; they carry no code. */
const UNAVAILABLE_MESSAGES = [
  /^timeout exceeded when trying to connect$/,
  /^Connection terminated/,
  /^Cannot use a pool after calling end on the pool$/,
  /^Client (?:has encountered a connection error|was closed) and is not queryable$/,
  /^Query read timeout$/,
  /^The database connection is not open$/,
  /^driver has already been destroyed$/,
];

function codeOf(err: object): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

function isUnavailableHere(err: object): boolean {
  const code = codeOf(err);
  if (code !== undefined) {
    if (NETWORK_CODES.has(code) || SQLITE_UNAVAILABLE.test(code) || PG_TRANSIENT_STATES.has(code)) return true;
    if (/^[0-9A-Z]{5}$/.test(code) && PG_UNAVAILABLE_CLASSES.has(code.slice(0, 2))) return true;
  }
  const message = (err as { message?: unknown }).message;
  return typeof message === 'string' && UNAVAILABLE_MESSAGES.some((m) => m.test(message));
}

/**
 * Whether `err` (or anything it wraps: its causes, an AggregateError's
 * errors, such as a connect tried on several addresses) says storage is
 * unavailable.
 */
export function isStorageUnavailable(err: unknown, depth = 0): boolean {
  if (typeof err !== 'object' || err === null || depth > 5) return false;
  if (isUnavailableHere(err)) return true;
  const { cause, errors } = err as { cause?: unknown; errors?: unknown };
  if (isStorageUnavailable(cause, depth + 1)) return true;
  return Array.isArray(errors) && errors.some((e) => isStorageUnavailable(e, depth + 1));
}
