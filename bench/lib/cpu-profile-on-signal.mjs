// Preloaded (`node --import`) into a child the bench wants profiled:
// the first SIGUSR2 starts V8's CPU profiler, the second stops it and writes
// the profile to $BENCH_CPU_PROFILE, then "cpu profile written" to stderr.
// So a profile covers the measured rounds only, not start-up or module loading.
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';

const file = process.env.BENCH_CPU_PROFILE;
if (file) {
  const session = new Session();
  session.connect();
  let running = false;
  process.on('SIGUSR2', () => {
    if (!running) {
      running = true;
      session.post('Profiler.enable', () => session.post('Profiler.start'));
      return;
    }
    running = false;
    session.post('Profiler.stop', (err, res) => {
      if (err) process.stderr.write(`cpu profile failed: ${err.message}\n`);
      else {
        writeFileSync(file, JSON.stringify(res.profile));
        process.stderr.write('cpu profile written\n');
      }
    });
  });
}
