/**
 * The house's import rule: the repository is a house of rooms (a room = a folder with an `index.ts`, or a folder
 * named in the layer table), and imports between rooms run one way. `checkHouse` parses every import of every
 * .ts/.mjs/.js file under the scanned folders (static `import … from` / `export … from` / `import '…'`, dynamic
 * `import('…')`, and worker or data paths `new URL('…', import.meta.url)`), resolves the relative ones and reports:
 *
 *  1. cycle     rooms that import each other, directly or through other rooms (every import inside the cycle);
 *  2. index     an import from outside a room that reaches a file in it other than its `index.ts` ("skips the
 *               index"); the room is the innermost room holding the target that does not hold the importer, so a
 *               nested room (trainer/model, coordinator/client) is entered through its own index.ts;
 *  3. layer     a room importing a room on its own layer or above it in the layer table (arrows run down);
 *  4. outside   a room's code importing a file outside every room (the test harness, bin/);
 *  5. unlisted  a room that the layer table does not place;
 *  6. missing   a relative import that resolves to no file.
 *
 * A file belongs to its innermost room; files outside every room (test/, bin/) may import any room but must still
 * enter it through its index. Tests (`*.test.ts`, everything under test/) and benchmarks (`*.bench.ts`, `bench/`)
 * may skip indexes and use the test harness; the layer and cycle rules hold for them too. Process entry points
 * (`main.ts`) are started by path, and plain-module worker scripts (`.mjs`) load the `.mjs` helpers they need by
 * path, so neither counts as skipping an index.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

export type HouseRuleName = 'cycle' | 'index' | 'layer' | 'outside' | 'unlisted' | 'missing';

export interface HouseConfig {
  /** Repository root. */
  root: string;
  /** Top-level folders to scan. Default: every folder at the root except node_modules, hidden and output folders. */
  folders?: string[];
  /**
   * Rooms from the bottom layer to the top: a room may import only rooms on lower layers. An entry names a room
   * and the rooms nested in it that no other entry names; entries that do not exist yet are allowed.
   */
  layers: string[][];
  /** Known violations, each to be removed once fixed; one that no longer happens is reported as stale. */
  exceptions?: HouseException[];
}

export interface HouseException {
  rule: HouseRuleName;
  /** Importing file and imported file, relative to the root, with forward slashes. */
  from: string;
  to: string;
  /** Why it is still there, and who removes it. */
  why: string;
}

export interface HouseViolation {
  rule: HouseRuleName;
  file: string;
  line: number;
  /** The resolved target relative to the root (the specifier itself for `missing`, the room for `unlisted`). */
  target: string;
  message: string;
}

export interface HouseReport {
  violations: HouseViolation[];
  /** Exceptions that matched nothing. */
  stale: HouseException[];
  /** Every room found, innermost last. */
  rooms: string[];
  /** Files scanned and relative imports found. */
  files: number;
  imports: number;
}

interface Edge {
  file: string;
  line: number;
  spec: string;
  /** Resolved target, relative to the root; undefined when it resolves to nothing. */
  target?: string;
}

const SKIP_DIRS = new Set(['node_modules', 'dist', 'runs', 'build', 'shared']);
const CODE = /\.(ts|mjs|js)$/;

const posix = (p: string) => p.split(sep).join('/');
const within = (file: string, folder: string) => file === folder || file.startsWith(folder + '/');
export const isTestFile = (f: string) => f.endsWith('.test.ts') || within(f, 'test');
export const isBenchFile = (f: string) => f.endsWith('.bench.ts') || f.split('/').includes('bench');

function walk(root: string, dir: string, out: string[]): void {
  for (const name of readdirSync(join(root, dir))) {
    if (name.startsWith('.') || SKIP_DIRS.has(name)) continue;
    const rel = dir ? `${dir}/${name}` : name;
    const st = statSync(join(root, rel));
    if (st.isDirectory()) walk(root, rel, out);
    else if (CODE.test(name) && !name.endsWith('.d.ts')) out.push(rel);
  }
}

/**
 * Source text with comments blanked out and every string literal replaced by `'#<n>'` (its text kept in `strings`),
 * so that import-like text inside comments or strings is not taken for an import; newlines are kept, so line
 * numbers hold. Template literals are blanked (their newlines kept).
 */
export function maskSource(src: string): { code: string; strings: string[] } {
  const strings: string[] = [];
  let code = '';
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    const n = src[i + 1];
    if (c === '/' && n === '/') {
      while (i < src.length && src[i] !== '\n') (code += ' '), i++;
    } else if (c === '/' && n === '*') {
      code += '  ';
      i += 2;
      while (i < src.length && !(src[i] === '*' && src[i + 1] === '/')) (code += src[i] === '\n' ? '\n' : ' '), i++;
      code += '  ';
      i += 2;
    } else if (c === "'" || c === '"' || c === '`') {
      let text = '';
      i++;
      while (i < src.length && src[i] !== c) {
        if (c !== '`' && src[i] === '\n') break; // an unterminated quote: stop at the line's end
        if (src[i] === '\\') (text += src[i]!), i++;
        text += src[i] ?? '';
        i++;
      }
      if (src[i] === c) i++;
      if (c === '`') code += '`' + text.replace(/[^\n]/g, '') + '`';
      else {
        code += `${c}#${strings.length}${c}`;
        strings.push(text);
      }
    } else {
      code += c;
      i++;
    }
  }
  return { code, strings };
}

const SPEC = String.raw`(['"])#(\d+)\1`;
const IMPORT_PATTERNS = [
  // import x from '…' / import { a } from '…' / import type … from '…' / export { a } from '…' / export * from '…'
  new RegExp(String.raw`(?:^|[;\n}])\s*(?:import|export)\s+(?:type\s+)?[\w*{}\s,$]*?\bfrom\s*` + SPEC, 'g'),
  // import '…' (side effects)
  new RegExp(String.raw`(?:^|[;\n}])\s*import\s*` + SPEC, 'g'),
  // import('…')
  new RegExp(String.raw`\bimport\s*\(\s*` + SPEC + String.raw`\s*\)`, 'g'),
  // new URL('…', import.meta.url): worker scripts and files read next to the code
  new RegExp(String.raw`\bnew\s+URL\(\s*` + SPEC + String.raw`\s*,\s*import\.meta\.url`, 'g'),
];

/** The relative specifiers a source imports, with their line numbers. */
export function parseImports(src: string): Array<{ spec: string; line: number }> {
  const { code, strings } = maskSource(src);
  const found = new Map<number, { spec: string; line: number }>();
  for (const re of IMPORT_PATTERNS) {
    for (const m of code.matchAll(re)) {
      const spec = strings[Number(m[2])]!;
      if (!spec.startsWith('.')) continue;
      const at = m.index! + m[0].lastIndexOf(`${m[1]}#${m[2]}`);
      const line = code.slice(0, at).split('\n').length;
      found.set(at, { spec, line });
    }
  }
  return [...found.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => v);
}

function resolveSpec(root: string, file: string, spec: string): string | undefined {
  const base = resolve(root, dirname(file), spec);
  for (const p of [base, `${base}.ts`, `${base}.mjs`, `${base}.js`, join(base, 'index.ts')]) {
    if (existsSync(p) && statSync(p).isFile()) return posix(relative(root, p));
  }
  if (existsSync(base) && statSync(base).isDirectory()) return posix(relative(root, base));
  return undefined;
}

/** Checks the house at `config.root`. */
export function checkHouse(config: HouseConfig): HouseReport {
  const root = config.root;
  const folders = config.folders ?? readdirSync(root).filter((n) => !n.startsWith('.') && !SKIP_DIRS.has(n) && statSync(join(root, n)).isDirectory());
  const files: string[] = [];
  for (const f of folders) if (existsSync(join(root, f))) walk(root, f, files);
  files.sort();

  // Rooms: folders holding an index.ts, and the folders the layer table names that exist.
  const rooms = new Set<string>();
  for (const f of files) if (f.endsWith('/index.ts')) rooms.add(f.slice(0, -'/index.ts'.length));
  for (const entry of config.layers.flat()) if (existsSync(join(root, entry)) && statSync(join(root, entry)).isDirectory()) rooms.add(entry);
  const roomList = [...rooms].sort((a, b) => a.split('/').length - b.split('/').length || a.localeCompare(b));
  const roomOf = (f: string): string | undefined => {
    let best: string | undefined;
    for (const r of roomList) if (f.startsWith(r + '/') && (!best || r.length > best.length)) best = r;
    return best;
  };
  const layerEntries = config.layers.flatMap((names, layer) => names.map((name) => ({ name, layer })));
  const entryOf = (room: string): { name: string; layer: number } | undefined => {
    let best: { name: string; layer: number } | undefined;
    for (const e of layerEntries) if (within(room, e.name) && (!best || e.name.length > best.name.length)) best = e;
    return best;
  };
  const layerOf = (room: string) => entryOf(room)?.layer;

  const edges: Edge[] = [];
  for (const file of files) {
    const src = readFileSync(join(root, file), 'utf8');
    for (const { spec, line } of parseImports(src)) edges.push({ file, line, spec, target: resolveSpec(root, file, spec) });
  }

  const violations: HouseViolation[] = [];
  const add = (rule: HouseRuleName, e: Edge, message: string) =>
    violations.push({ rule, file: e.file, line: e.line, target: e.target ?? e.spec, message });

  for (const r of roomList) {
    if (layerOf(r) === undefined) {
      violations.push({ rule: 'unlisted', file: `${r}/index.ts`, line: 1, target: r, message: `room ${r} is not in the layer table: place it on a layer` });
    }
  }

  const roomEdges = new Map<string, Map<string, Edge[]>>();
  for (const e of edges) {
    if (!e.target) {
      add('missing', e, `${e.spec} resolves to no file`);
      continue;
    }
    const t = e.target;
    const from = roomOf(e.file);
    const to = roomOf(t);
    const testOrBench = isTestFile(e.file) || isBenchFile(e.file);

    // 2. index: the innermost room holding the target but not the importer.
    let entered: string | undefined;
    for (const r of roomList) if (within(t, r) && !within(e.file, r) && (!entered || r.length > entered.length)) entered = r;
    const entryPoint = t.endsWith('/main.ts') || (e.file.endsWith('.mjs') && t.endsWith('.mjs'));
    if (entered && t !== `${entered}/index.ts` && t !== entered && !testOrBench && !entryPoint) {
      add('index', e, `skips the index of ${entered}: import ${entered}/index.ts instead`);
    }

    if (!from) continue;
    // 4. outside: a room's code reaching out of the house.
    if (!to) {
      if (!testOrBench) add('outside', e, `room ${from} reaches outside the house (${t}); only tests and benchmarks may`);
      continue;
    }
    if (from === to) continue;
    // 3. layer.
    // A room placed by its parent's entry sits on the parent's layer: the parent may import it, not the reverse.
    const ef = entryOf(from);
    const et = entryOf(to);
    const lf = ef?.layer;
    const lt = et?.layer;
    const nestedBelow = ef !== undefined && ef === et && within(to, from);
    if (lf !== undefined && lt !== undefined && lt >= lf && !nestedBelow) {
      add('layer', e, lt === lf
        ? `${from} and ${to} share layer ${lf}: rooms on one layer do not import each other`
        : `${from} (layer ${lf}) imports ${to} (layer ${lt}), a room above it: arrows run down the layer table`);
    }
    let m = roomEdges.get(from);
    if (!m) roomEdges.set(from, (m = new Map()));
    m.set(to, [...(m.get(to) ?? []), e]);
  }

  // 1. cycles: strongly connected components of the room graph (Tarjan).
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of roomEdges.get(v)?.keys() ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) components.push(c.sort());
    }
  };
  for (const r of [...roomEdges.keys()].sort()) if (!index.has(r)) visit(r);
  for (const c of components) {
    const members = new Set(c);
    for (const from of c) {
      for (const [to, es] of roomEdges.get(from) ?? []) {
        if (!members.has(to)) continue;
        for (const e of es) add('cycle', e, `rooms ${c.join(' ⇄ ')} import each other (${from} → ${to})`);
      }
    }
  }

  // Known exceptions.
  const exceptions = config.exceptions ?? [];
  const used = new Set<HouseException>();
  const kept = violations.filter((v) => {
    const x = exceptions.find((x) => x.rule === v.rule && x.from === v.file && x.to === v.target);
    if (x) used.add(x);
    return !x;
  });
  kept.sort((a, b) => a.rule.localeCompare(b.rule) || a.file.localeCompare(b.file) || a.line - b.line);
  return { violations: kept, stale: exceptions.filter((x) => !used.has(x)), rooms: roomList, files: files.length, imports: edges.length };
}

/** A readable account of what breaks the rule: one line per import, `file:line → target  (why)`. */
export function formatHouseReport(r: HouseReport): string {
  const lines: string[] = [];
  if (r.violations.length) {
    lines.push(`${r.violations.length} import(s) break the house's rules:`);
    for (const v of r.violations) lines.push(`  [${v.rule}] ${v.file}:${v.line} → ${v.target}  (${v.message})`);
  }
  if (r.stale.length) {
    lines.push(`${r.stale.length} known exception(s) no longer happen; remove them from the list:`);
    for (const x of r.stale) lines.push(`  [${x.rule}] ${x.from} → ${x.to}`);
  }
  return lines.join('\n');
}
