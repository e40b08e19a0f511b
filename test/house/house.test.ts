/**
 * The house's import rule on this repository (rule.ts says what it checks), and the rule's own logic on small
 * fixture trees. Runs in the `unit` project: `npx vitest run test/house` (`npm run check:house`).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { checkHouse, formatHouseReport, parseImports, type HouseConfig, type HouseException } from './rule';

/**
 * Bottom to top. proto/ (the collective's wire contract) sits with common/ at the bottom: it imports nothing, and
 * the collective reads it. deploy/ (generated artifacts' code) sits just under cli/, the only room that uses it.
 * trainer/eval/ (scoring: caption metrics, VQA accuracy, retrieval recall) is pure arithmetic over text and numbers
 * that imports only common/, so it sits low, where both the trainer and the `blip2 eval` command can reach it.
 * trainer/generate/ (greedy and beam search over a cached decoder) runs the model, so it sits just above
 * trainer/model, beside coordinator/client (neither imports the other).
 */
export const LAYERS: string[][] = [
  ['common', 'proto'],
  ['dataloader', 'trainer/engine', 'trainer/collective', 'trainer/optim', 'trainer/eval'],
  ['trainer/model'],
  ['coordinator/client', 'trainer/generate'],
  ['trainer', 'coordinator'],
  ['deploy'],
  ['cli'],
];

/**
 * Violations accepted for a while, each with its reason (none today). The test reports an entry that no longer
 * happens, so the list cannot go stale.
 */
export const KNOWN_EXCEPTIONS: HouseException[] = [];

const repoRoot = resolve(import.meta.dirname, '../..');

test('the repository keeps the house rule: one-way imports between rooms, each room entered through its index', () => {
  const report = checkHouse({ root: repoRoot, layers: LAYERS, exceptions: KNOWN_EXCEPTIONS });
  expect(report.rooms).toEqual(expect.arrayContaining(['cli', 'common', 'coordinator', 'coordinator/client', 'dataloader', 'deploy', 'trainer', 'trainer/model']));
  expect(report.files).toBeGreaterThan(150);
  expect(formatHouseReport(report)).toBe('');
});

test('every source file opens with a comment that says what it holds', () => {
  const tracked = execFileSync('git', ['ls-files', '*.ts', '*.mjs', '*.js', '*.cc', '*.h'], { cwd: repoRoot, encoding: 'utf8' }).split('\n').filter(Boolean);
  const bare = tracked.filter((f) => {
    if (!existsSync(join(repoRoot, f))) return false; // deleted in the working tree
    const first = readFileSync(join(repoRoot, f), 'utf8').split('\n').find((l) => l.trim() !== '') ?? '';
    return !/^\s*(\/\/|\/\*|#!)/.test(first);
  });
  expect(tracked.length).toBeGreaterThan(150);
  expect(bare, 'files whose first line is not a comment').toEqual([]);
});

test('the Markdown documents are readable: no paragraph repeated, none grown past 512 KiB', () => {
  // A scripted README edit once replaced the empty string, so one paragraph went between every two characters
  // (78 MB, and CI still passed). Each Markdown file is checked for size and for a paragraph that occurs twice.
  const docs = execFileSync('git', ['ls-files', '*.md'], { cwd: repoRoot, encoding: 'utf8' }).split('\n').filter(Boolean);
  expect(docs).toContain('README.md');
  for (const f of docs) {
    if (!existsSync(join(repoRoot, f))) continue;
    const text = readFileSync(join(repoRoot, f), 'utf8');
    expect(text.length, `${f} size`).toBeLessThan(512 * 1024);
    const seen = new Set<string>();
    const repeated: string[] = [];
    for (const para of text.split(/\n\s*\n/)) {
      const p = para.trim();
      if (p.length < 200 || p.startsWith('```') || p.startsWith('|')) continue; // code and tables may repeat
      if (seen.has(p)) repeated.push(p.slice(0, 80));
      seen.add(p);
    }
    expect(repeated, `${f}: paragraphs that occur twice`).toEqual([]);
  }
});

describe('the rule itself', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const tree = (files: Record<string, string>): string => {
    const root = mkdtempSync(join(tmpdir(), 'blip2-house-'));
    dirs.push(root);
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(root, path)), { recursive: true });
      writeFileSync(join(root, path), text);
    }
    return root;
  };
  const check = (root: string, layers: string[][], exceptions?: HouseException[]) => {
    const c: HouseConfig = { root, layers, exceptions };
    return checkHouse(c);
  };

  test('parses static, re-export, side-effect, dynamic and worker imports, not those in comments', () => {
    const src = [
      "import { a } from './a';",
      'import {',
      '  b,',
      "  type B,",
      "} from '../b';",
      "export * from './c';",
      "export { d } from './d/index.ts';",
      "import './e';",
      "const f = await import('./f');",
      "const w = new Worker(new URL('./worker.mjs', import.meta.url));",
      "// import { g } from './g';",
      "/* export * from './h'; */",
      "import { tf } from '@tensorflow/tfjs';",
      "const url = 'nats://x'; import { i } from './i';",
    ].join('\n');
    expect(parseImports(src)).toEqual([
      { spec: './a', line: 1 }, { spec: '../b', line: 5 }, { spec: './c', line: 6 }, { spec: './d/index.ts', line: 7 },
      { spec: './e', line: 8 }, { spec: './f', line: 9 }, { spec: './worker.mjs', line: 10 }, { spec: './i', line: 14 },
    ]);
  });

  test('a cycle between rooms and an import that skips an index fail, naming file:line → target', () => {
    const root = tree({
      'a/index.ts': "// room a\nexport { x } from './x';\n",
      'a/x.ts': "// a's x\nimport { y } from '../b';\nexport const x = y;\n",
      'b/index.ts': "// room b\nexport { y } from './y';\n",
      'b/y.ts': "// b's y\n\nimport { x } from '../a/x';\nexport const y = 1;\nexport const z = x;\n",
      'test/t.test.ts': "import { x } from '../a/x';\n",
    });
    const r = check(root, [['a', 'b']]);
    const text = formatHouseReport(r);
    expect(text).toContain('[index] b/y.ts:3 → a/x.ts  (skips the index of a: import a/index.ts instead)');
    expect(text).toContain('[cycle] a/x.ts:2 → b/index.ts  (rooms a ⇄ b import each other (a → b))');
    expect(text).toContain('[cycle] b/y.ts:3 → a/x.ts  (rooms a ⇄ b import each other (b → a))');
    // Same layer: neither may import the other.
    expect(text).toContain('[layer] a/x.ts:2 → b/index.ts  (a and b share layer 0: rooms on one layer do not import each other)');
    // A test may reach inside a room.
    expect(text).not.toContain('test/t.test.ts');
    expect(r.violations.map((v) => v.rule).sort()).toEqual(['cycle', 'cycle', 'index', 'layer', 'layer']);
  });

  test('a nested room is entered through its own index; a room importing upwards fails; the table must place every room', () => {
    const root = tree({
      'low/index.ts': "export { n } from './inner/n';\n",
      'low/inner/index.ts': "export { n } from './n';\n",
      'low/inner/n.ts': "export const n = 1;\n",
      'low/up.ts': "import { h } from '../high';\nexport const u = h;\n",
      'high/index.ts': "export { h } from './h';\n",
      'high/h.ts': "import { n } from '../low/inner';\nimport { m } from '../low/inner/n';\nexport const h = n + m;\n",
      'odd/index.ts': "export const o = 1;\n",
    });
    const r = check(root, [['low'], ['high']]);
    const text = formatHouseReport(r);
    // low/index.ts re-exports its nested room's internals: from low/, the room entered is low/inner.
    expect(text).toContain('[index] low/index.ts:1 → low/inner/n.ts  (skips the index of low/inner: import low/inner/index.ts instead)');
    expect(text).toContain('[index] high/h.ts:2 → low/inner/n.ts  (skips the index of low/inner');
    expect(text).not.toContain('high/h.ts:1');
    expect(text).toContain('[layer] low/up.ts:1 → high/index.ts  (low (layer 0) imports high (layer 1), a room above it: arrows run down the layer table)');
    expect(text).toContain('[unlisted] odd/index.ts:1 → odd');
  });

  test('known exceptions silence their violation; one that no longer happens is reported', () => {
    const root = tree({
      'a/index.ts': "export const a = 1;\n",
      'a/inner.ts': "export const i = 1;\n",
      'b/index.ts': "import { i } from '../a/inner';\nexport const b = i;\n",
    });
    const ok = check(root, [['a'], ['b']], [{ rule: 'index', from: 'b/index.ts', to: 'a/inner.ts', why: 'fixture' }]);
    expect(formatHouseReport(ok)).toBe('');
    const stale = check(root, [['a'], ['b']], [
      { rule: 'index', from: 'b/index.ts', to: 'a/inner.ts', why: 'fixture' },
      { rule: 'index', from: 'b/index.ts', to: 'a/gone.ts', why: 'fixed already' },
    ]);
    expect(formatHouseReport(stale)).toBe('1 known exception(s) no longer happen; remove them from the list:\n  [index] b/index.ts → a/gone.ts');
  });

  test("a room's code may not reach into the test harness; its tests and benchmarks may", () => {
    const root = tree({
      'a/index.ts': "import { h } from '../test/harness';\nexport const a = h;\n",
      'a/a.test.ts': "import { h } from '../test/harness';\n",
      'a/bench/a.bench.ts': "import { h } from '../../test/harness';\nimport { nope } from './nope';\n",
      'test/harness.ts': "export const h = 1;\n",
    });
    const text = formatHouseReport(check(root, [['a']]));
    expect(text).toContain('[outside] a/index.ts:1 → test/harness.ts  (room a reaches outside the house (test/harness.ts); only tests and benchmarks may)');
    expect(text).toContain('[missing] a/bench/a.bench.ts:2 → ./nope  (./nope resolves to no file)');
    expect(text.split('\n')).toHaveLength(3);
  });
});
