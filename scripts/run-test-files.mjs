// `node --test FILE...` in the order given: Node 20's command line sorts the
// files by name, while node:test's run() starts them in the order it gets,
// `TEST_CONCURRENCY` at a time. scripts/run-tests.mjs starts this with the
// Node options each test file's process should have (run() passes its own
// process's options on to them).
// Usage: node [options] scripts/run-test-files.mjs FILE...
import { run } from 'node:test';
import { spec } from 'node:test/reporters';

const files = process.argv.slice(2);
const concurrency = Number(process.env.TEST_CONCURRENCY ?? '2');
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`run-test-files: TEST_CONCURRENCY must be a whole number of files at once, got ${JSON.stringify(process.env.TEST_CONCURRENCY)}`);
  process.exit(2);
}
// As `node --test` does: a failure, not a todo, fails the run.
run({ files, concurrency })
  .on('test:fail', (data) => {
    if (data.todo === undefined || data.todo === false) process.exitCode = 1;
  })
  .compose(new spec())
  .pipe(process.stdout);
