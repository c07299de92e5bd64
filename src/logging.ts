/**
 * The service's logger. Three layers keep credentials out of every line, at
 * every level:
 *
 * 1. No code logs a header, a key or a request body (prompts only through the
 *    access log, and only with LOG_PROMPTS=true).
 * 2. `redact` censors fields whose name says they hold a credential, and the
 *    `err` serializer keeps only an error's type, message, stack and a few
 *    known-safe fields: pino's default copies every enumerable property,
 *    which for HTTP client errors can be request headers or upstream bodies.
 * 3. The secrets this process knows (FAL_KEY, API_KEYS, ADMIN_API_KEY, the
 *    billing webhook secret, the database password) are replaced in the
 *    final line, raw, JSON-escaped and base64-encoded, whatever path they
 *    took to get there (an error message quoting a URL, say).
 */
import pino, { type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';

export const REDACTED = '[redacted]';

const SECRET_FIELDS = ['authorization', 'cookie', 'apiKey', 'api_key', 'key', 'falKey', 'secret', 'password', 'token', 'databaseUrl', 'connectionString'];

/** Field paths censored wherever they appear at the top level or one level down. */
export const REDACT_PATHS: string[] = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  'headers.authorization',
  '*.headers.authorization',
  '*.headers.cookie',
  'req.headers.authorization',
  'req.headers.cookie',
];

/** Error fields that describe a failure without carrying payloads. */
const SAFE_ERROR_FIELDS = ['code', 'errno', 'syscall', 'status', 'statusCode', 'phase', 'kind', 'type'];

/** URL credentials and auth schemes, for messages that quote a URL or a header. */
function scrubText(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/)[^/\s@]*@/gi, `$1${REDACTED}@`)
    .replace(/\b(Bearer|Basic|Key)\s+[A-Za-z0-9._~+/=:-]{8,}/g, `$1 ${REDACTED}`);
}

/** A serializable view of an error: type, message, stack, safe fields, and its causes the same way. */
export function safeError(err: unknown, depth = 0): unknown {
  if (!(err instanceof Error)) {
    if (typeof err === 'string') return scrubText(err);
    return err;
  }
  const out: Record<string, unknown> = { type: err.name, message: scrubText(err.message) };
  if (err.stack) out['stack'] = scrubText(err.stack);
  for (const f of SAFE_ERROR_FIELDS) {
    const v = (err as unknown as Record<string, unknown>)[f];
    if (typeof v === 'string' || typeof v === 'number') out[f] = typeof v === 'string' ? scrubText(v) : v;
  }
  if (err.cause !== undefined && depth < 4) out['cause'] = safeError(err.cause, depth + 1);
  if (err instanceof AggregateError && depth < 4) out['errors'] = err.errors.slice(0, 5).map((e) => safeError(e, depth + 1));
  return out;
}

/** Every form in which `secret` could appear inside a JSON log line. */
function secretForms(secret: string): string[] {
  const forms = new Set<string>([secret, JSON.stringify(secret).slice(1, -1)]);
  for (const enc of ['base64', 'base64url'] as const) {
    const b = Buffer.from(secret).toString(enc);
    forms.add(b.replace(/=+$/, ''));
  }
  // Shorter strings would censor ordinary words; config refuses short keys anyway.
  return [...forms].filter((f) => f.length >= 8);
}

/** The password of a database URL, if it has one. */
export function urlPassword(raw: string | undefined): string | undefined {
  if (!raw || !URL.canParse(raw)) return undefined;
  const p = new URL(raw).password;
  return p ? decodeURIComponent(p) : undefined;
}

export interface LoggerOptions {
  level: string;
  /** Values that must never appear in a line, in any encoding. */
  secrets?: Array<string | undefined>;
  /** Default stdout. */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  const forms = [...new Set((opts.secrets ?? []).filter((s): s is string => !!s).flatMap(secretForms))]
    // Longest first, so a secret that contains another is censored whole.
    .sort((a, b) => b.length - a.length);
  const options: pino.LoggerOptions = {
    level: opts.level,
    redact: { paths: REDACT_PATHS, censor: REDACTED },
    serializers: { err: (e: unknown) => safeError(e), error: (e: unknown) => safeError(e) },
  };
  if (forms.length > 0) {
    options.hooks = {
      streamWrite(line: string): string {
        let out = line;
        for (const f of forms) if (out.includes(f)) out = out.split(f).join(REDACTED);
        return out;
      },
    };
  }
  return opts.destination ? pino(options, opts.destination) : pino(options);
}

/**
 * A logger for one kind of line whose fields are all fixed, flat and named by
 * us (the access log: ids, route, status, duration, and the prompt when
 * LOG_PROMPTS is on): none of them is, or contains, a field `redact` would
 * censor, so the path redaction, which costs several times what the rest of
 * such a line does, is skipped for it: the line is written once per
 * request. The secrets this process knows are still scrubbed from the final
 * line (layer 3, the stream hook, is inherited), as are the serializers.
 */
export function fixedFieldsLogger(logger: Logger): Logger {
  return logger.child({}, { redact: { paths: [], censor: REDACTED } });
}

/**
 * `auto` prints for people on a terminal and JSON lines everywhere else (a
 * pipe, a file, a log collector), so `npm start` is readable and a deployment
 * still ships JSON.
 */
export function logFormatFor(setting: 'auto' | 'json' | 'pretty', isTty: boolean): 'json' | 'pretty' {
  return setting === 'auto' ? (isTty ? 'pretty' : 'json') : setting;
}

/**
 * pino-pretty as the logger's destination, in this thread and synchronous,
 * so its lines and the banner (written to stdout directly) keep their order.
 * It is fed the final JSON line, after the secrets hook of createLogger, so a
 * person sees nothing the JSON line would not have carried.
 */
export function prettyDestination(opts: { destination?: NodeJS.WritableStream; colorize?: boolean } = {}): DestinationStream {
  return pretty({
    sync: true,
    destination: opts.destination ?? 1,
    ...(opts.colorize === undefined ? {} : { colorize: opts.colorize }),
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname',
  });
}
