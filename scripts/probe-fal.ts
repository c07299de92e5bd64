/**
 * `npm run probe:fal`: a short scripted conversation with a fal, printing
 * for each real-fal behaviour the emulator reproduces what that fal did,
 * whether the emulator's default matches, and what the conversation cost.
 * See docs/probe.md.
 *
 *   npm run probe:fal                          # the bundled emulator, in process
 *   FAL_KEY=... npm run probe:fal              # real fal (costs about $0.02)
 *   FAL_BASE_URL=http://host:8090 npm run probe:fal   # another fal-protocol server
 *   npm run probe:fal -- --json                # the same report as JSON
 *
 * Exit code: 0 nothing DIFFERS, 1 something DIFFERS, 2 the probe could not
 * finish (fal unreachable, a refused key, a job past its deadline).
 */
import { ProbeAbort } from './probe/conversation.js';
import { formatJson, formatText } from './probe/report.js';
import { probe, targetFromEnv } from './probe/run.js';
import { describeError } from './probe/recorder.js';

const USAGE = `usage: npm run probe:fal [-- --json]
  no FAL_KEY, no FAL_BASE_URL   probe the bundled emulator (in process)
  FAL_BASE_URL=<url>            probe that fal-protocol server (FAL_KEY optional)
  FAL_KEY=<key>                 probe real fal (costs about $0.02; see docs/probe.md)
`;

function finish(text: string, code: number, stream: NodeJS.WriteStream = process.stdout): void {
  // Exit once the output is flushed, so idle keep-alive sockets cannot hold the process.
  stream.write(text, () => process.exit(code));
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) return finish(USAGE, 0);
  const unknown = args.filter((a) => a !== '--json');
  if (unknown.length > 0) return finish(`probe:fal: unknown argument ${unknown.join(' ')}\n${USAGE}`, 2, process.stderr);
  const json = args.includes('--json');
  const spec = targetFromEnv();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  if (spec.kind === 'fal') log('probe: talking to real fal with FAL_KEY; this bills your fal account (about $0.02)');
  try {
    const report = await probe(spec, { log });
    finish(json ? formatJson(report) : formatText(report), report.exit_code);
  } catch (err) {
    const message = err instanceof ProbeAbort ? err.message : describeError(err);
    if (json) finish(`${JSON.stringify({ error: message, target: spec.kind }, null, 2)}\n`, 2);
    else finish(`probe:fal: could not finish: ${message}\n`, 2, process.stderr);
  }
}

void main();
