#!/usr/bin/env node
/**
 * The size rule of the house (docs/ARCHITECTURE.md): no `src` file over 400
 * lines and no function over 80, tables and schemas aside. Prints every
 * breach as `path:line  what  lines` and exits 1 when there is one.
 *
 *   node scripts/room-sizes.mjs [--json] [--root=<dir>]
 *
 * `--root` checks another tree's `src` (the test checks the checker on one).
 *
 * A function is any function declaration, method, accessor, constructor,
 * function expression or arrow function. Its length is its own lines: from
 * its first to its last line, less the lines of the functions written inside
 * it, which are measured on their own (a factory that returns ten short
 * methods is read as ten short functions and the lines that join them). A file or function is exempt when the line before it (or the
 * file's first line) carries `size: table` with a reason: data laid out as a
 * table or a schema reads best in one piece.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

export const MAX_FILE_LINES = 400;
export const MAX_FUNCTION_LINES = 80;
const EXEMPT = /size:\s*table\b/;

function* sourceFiles(dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* sourceFiles(path);
    else if (/\.(ts|mts)$/.test(name) && !name.endsWith('.d.ts')) yield path;
  }
}

export function breaches(root) {
  const found = [];
  for (const path of sourceFiles(join(root, 'src'))) {
    const text = readFileSync(path, 'utf8');
    const lines = text.split('\n');
    const rel = relative(root, path);
    const fileLines = text.endsWith('\n') ? lines.length - 1 : lines.length;
    if (fileLines > MAX_FILE_LINES && !EXEMPT.test(lines.slice(0, 40).join('\n'))) found.push({ path: rel, line: 1, what: 'file', lines: fileLines });
    const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
    const span = (node) => {
      const start = source.getLineAndCharacterOfPosition(node.getStart(source)).line;
      return { start, lines: source.getLineAndCharacterOfPosition(node.end).line - start + 1 };
    };
    const isFunction = (node) => ts.isFunctionLike(node) && 'body' in node && node.body !== undefined;
    /** Lines of the functions directly inside `node` (not inside those). */
    const nestedLines = (node) => {
      let n = 0;
      const walk = (child) => {
        if (isFunction(child)) n += span(child).lines;
        else ts.forEachChild(child, walk);
      };
      ts.forEachChild(node, walk);
      return n;
    };
    const visit = (node) => {
      if (isFunction(node)) {
        const { start, lines: total } = span(node);
        const own = total - nestedLines(node);
        if (own > MAX_FUNCTION_LINES && !EXEMPT.test(lines[start - 1] ?? '') && !EXEMPT.test(lines[start] ?? '')) {
          found.push({ path: rel, line: start + 1, what: `function ${name(node)}`, lines: own });
        }
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return found;
}

function name(node) {
  if (node.name && ts.isIdentifier(node.name)) return node.name.text;
  const parent = node.parent;
  if (parent && ts.isVariableDeclaration(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  if (parent && ts.isPropertyAssignment(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  return '(anonymous)';
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const rootArg = process.argv.find((a) => a.startsWith('--root='));
  const found = breaches(rootArg ? rootArg.slice('--root='.length) : new URL('..', import.meta.url).pathname);
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(found, null, 2)}\n`);
  else for (const b of found) process.stdout.write(`${b.path}:${b.line}  ${b.what}  ${b.lines} lines\n`);
  process.exit(found.length ? 1 : 0);
}
