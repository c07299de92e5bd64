#!/usr/bin/env node
/**
 * The counted path (docs/ARCHITECTURE.md): the `src` modules one
 * non-streamed `POST /v1/images/generations` passes through after the
 * middleware, that is, the modules reachable from the route's handler
 * (src/http/routes/images.ts), and how many there are against the limit.
 *
 *   node scripts/request-path.mjs [--json]
 *
 * Exits 1 when the path is longer than the limit.
 *
 * What counts as reaching a module (imports are resolved by the TypeScript
 * compiler with the project's tsconfig):
 * - a value import or re-export (`import { x }`, `import x`, `import * as`,
 *   `import './x.js'`, `export … from`, `import('./x.js')`): the module's code
 *   runs, or is loaded, for the request;
 * - a type-only import (`import type`, or every specifier marked `type`) is
 *   not followed, with one exception, the ports: the handler and the use case
 *   are given their collaborators by the composition root (src/service.ts)
 *   and import only their interfaces. A type-only import of an interface with
 *   methods (something the request calls, not data it reads) reaches the
 *   module that declares it, and that module's own imports are followed by
 *   these same rules: a port declared beside its implementation (e.g.
 *   `FalGateway` in src/fal/gateway.ts) brings the implementation's imports
 *   onto the path, a port declared on its own (types only) does not. A
 *   module that re-exports a port (`export type { X } from …`) counts as
 *   declaring it: importing the port from there reaches that module, so a
 *   re-export cannot hide where the request's code leads;
 * - an implementation the composition root puts behind a port declared
 *   elsewhere (e.g. the billing webhook worker behind `BillingEvents`), and
 *   the composition root itself, are not counted: the path is what the
 *   handler's code leads a reader to.
 * Static imports count whether or not this particular request executes them
 * (the streaming helpers the handler imports are on the list): the path is
 * what a maintainer has to open to follow the request.
 */
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

export const ENTRY = 'src/http/routes/images.ts';
export const MAX_MODULES = 12;

/** How `file` reaches other src modules: one edge per import, with the reason it is followed. */
function edges(file, root, options, host) {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const out = [];
  const resolveSrc = (spec, from = file) => {
    const r = ts.resolveModuleName(spec, from, options, host).resolvedModule;
    return r && !r.isExternalLibraryImport && r.resolvedFileName.startsWith(join(root, 'src') + '/') ? r.resolvedFileName : undefined;
  };
  const add = (spec, via) => {
    const target = resolveSrc(spec);
    if (target) out.push({ target, via });
  };
  for (const st of source.statements) {
    if (ts.isImportDeclaration(st) && ts.isStringLiteral(st.moduleSpecifier)) {
      const spec = st.moduleSpecifier.text;
      const clause = st.importClause;
      const named = clause?.namedBindings && ts.isNamedImports(clause.namedBindings) ? clause.namedBindings.elements : [];
      const typeOnly = clause !== undefined && (clause.isTypeOnly || (!clause.name && named.length > 0 && named.every((e) => e.isTypeOnly)));
      if (!typeOnly) {
        add(spec, 'import');
        continue;
      }
      const target = resolveSrc(spec);
      const names = named.map((e) => (e.propertyName ?? e.name).text);
      const called = target ? names.filter((n) => portsOf(target, resolveSrc).has(n)) : [];
      if (called.length > 0) out.push({ target, via: `port ${called.join(', ')}` });
    } else if (ts.isExportDeclaration(st) && st.moduleSpecifier && ts.isStringLiteral(st.moduleSpecifier)) {
      const named = st.exportClause && ts.isNamedExports(st.exportClause) ? st.exportClause.elements : [];
      if (!st.isTypeOnly && !(named.length > 0 && named.every((e) => e.isTypeOnly))) add(st.moduleSpecifier.text, 'export');
    }
  }
  const dynamic = (node) => {
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] && ts.isStringLiteral(node.arguments[0])) add(node.arguments[0].text, 'import()');
    ts.forEachChild(node, dynamic);
  };
  dynamic(source);
  return out;
}

const ports = new Map();
/**
 * The ports `file` declares: interfaces (or object types) with at least one
 * method, something a caller calls rather than data it reads; and the ports
 * it re-exports from other src modules (`resolveSrc` resolves their
 * specifiers from `file`).
 */
function portsOf(file, resolveSrc) {
  if (ports.has(file)) return ports.get(file);
  const names = new Set();
  ports.set(file, names);
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const callable = (m) => ts.isMethodSignature(m) || (ts.isPropertySignature(m) && m.type !== undefined && ts.isFunctionTypeNode(m.type));
  for (const st of source.statements) {
    if ((ts.isInterfaceDeclaration(st) && st.members.some(callable)) || (ts.isTypeAliasDeclaration(st) && ts.isTypeLiteralNode(st.type) && st.type.members.some(callable))) names.add(st.name.text);
    if (ts.isExportDeclaration(st) && st.moduleSpecifier && ts.isStringLiteral(st.moduleSpecifier) && st.exportClause && ts.isNamedExports(st.exportClause)) {
      const from = resolveSrc(st.moduleSpecifier.text, file);
      if (!from) continue;
      for (const e of st.exportClause.elements) if (portsOf(from, resolveSrc).has((e.propertyName ?? e.name).text)) names.add(e.name.text);
    }
  }
  return names;
}

/** The path: every module reachable from the entry, breadth first, each with the module and the edge that first reached it. */
export function requestPath(root) {
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')); } });
  const host = ts.createCompilerHost(config.options);
  const entry = join(root, ENTRY);
  const reached = new Map([[entry, undefined]]);
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.shift();
    for (const { target, via } of edges(file, root, config.options, host)) {
      if (reached.has(target)) continue;
      reached.set(target, { from: relative(root, file), via });
      queue.push(target);
    }
  }
  return [...reached].map(([file, by]) => ({ module: relative(root, file), ...(by ?? {}) }));
}

/** The listing as printed and as kept in docs/ARCHITECTURE.md. */
export function formatPath(path) {
  const width = Math.max(...path.map((p) => p.module.length));
  const lines = path.map((p) => (p.from ? `${p.module.padEnd(width)}  ← ${p.from} (${p.via})` : `${p.module.padEnd(width)}  (the route's handler)`));
  return [`${path.length} modules (limit ${MAX_MODULES})`, ...lines].join('\n');
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const path = requestPath(new URL('..', import.meta.url).pathname);
  process.stdout.write(process.argv.includes('--json') ? `${JSON.stringify(path, null, 2)}\n` : `${formatPath(path)}\n`);
  process.exit(path.length > MAX_MODULES ? 1 : 0);
}
