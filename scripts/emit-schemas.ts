/**
 * Writes `schemas/*.json` from the const schema modules in `src/schemas/`,
 * which are the source of truth. `--check` writes nothing and exits 1 when a
 * file is missing, stale, or no longer emitted (for CI).
 *
 *   npx tsx scripts/emit-schemas.ts [--check]
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EMITTED_SCHEMAS, schemaFileText } from '../src/schemas/index.js';

const dir = fileURLToPath(new URL('../schemas/', import.meta.url));
const check = process.argv.includes('--check');

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

mkdirSync(dir, { recursive: true });
const problems: string[] = [];
for (const { file, schema } of EMITTED_SCHEMAS) {
  const path = join(dir, file);
  const text = schemaFileText(schema);
  if (read(path) === text) continue;
  if (check) problems.push(`schemas/${file} is out of date`);
  else {
    writeFileSync(path, text);
    console.log(`wrote schemas/${file}`);
  }
}
const emitted = new Set(EMITTED_SCHEMAS.map((s) => s.file));
for (const file of readdirSync(dir)) {
  if (file.endsWith('.json') && !emitted.has(file)) problems.push(`schemas/${file} is not emitted by src/schemas/index.ts (delete it or add it there)`);
}
if (problems.length > 0) {
  console.error(problems.join('\n'));
  if (check) console.error('Run: npx tsx scripts/emit-schemas.ts');
  process.exit(1);
}
