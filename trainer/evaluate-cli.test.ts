// `blip2 eval --checkpoint` through the real command (bin/blip2.js) on checkpoints written by the test: --json
// prints one report object (and the same report lands beside the checkpoint), the table with a progress display on
// stderr, and bad input as one `blip2: …` line with exit 2 (a missing split, retrieval on a stage-2 checkpoint, vqa
// on stage 1, --checkpoint without --data, a missing checkpoint).
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { makeEvalFixture, type EvalFixture } from './testing/eval-fixture';

const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
let f: EvalFixture;
beforeAll(async () => {
  f = await makeEvalFixture();
}, 120_000);
afterAll(() => rmSync(f.work, { recursive: true, force: true }));

test('--json prints the report, written beside the checkpoint too; the table has chance levels and baselines', () => {
  const j = blip2('eval', '--task', 'retrieval', '--task', 'caption', '--checkpoint', f.stage1, '--data', f.data, '--limit', '4', '--beams', '1', '--max-len', '6', '--json');
  expect(j.status, j.stderr).toBe(0);
  const report = JSON.parse(j.stdout);
  expect(report).toMatchObject({ checkpoint: f.stage1, split: 'val', stage: 1, step: 4, retrieval: { images: 4, texts: 8 }, caption: { images: 4, beams: 1, maxLength: 6 } });
  expect(report.retrieval.chance.img_r1).toBeCloseTo(25, 10);
  expect(JSON.parse(readFileSync(join(f.stage1, 'eval-val.json'), 'utf8'))).toEqual(report);
  expect(j.stderr).toMatch(/^retrieval: \d+\/32$/m); // progress: the 4 x 8 pairs scored with ITM

  const t = blip2('eval', '--task', 'all', '--checkpoint', f.stage1, '--data', f.data, '--limit', '3', '--beams', '1', '--max-len', '6');
  expect(t.status, t.stderr).toBe(0);
  expect(t.stdout).toMatch(/^task\s+metric\s+value\s+chance\/baseline$/m);
  expect(t.stdout).toMatch(/^retrieval\s+img_r1\s+\d+\.\d\d\s+33\.33$/m);
  expect(t.stdout).toMatch(/^caption\s+CIDEr\s+\d+\.\d{4}\s+\d+\.\d{4}$/m);
  expect(t.stdout).not.toMatch(/^vqa/m);
  expect(t.stdout).toContain(`written to ${join(f.stage1, 'eval-val.json')}`);
}, 120_000);

test('bad input: one line, exit 2', () => {
  const cases: Array<[string[], RegExp]> = [
    [['eval', '--task', 'caption', '--checkpoint', f.stage1, '--data', f.data, '--split', 'test'], /no dataset of split "test" \(the index has: train, val\)/],
    [['eval', '--task', 'retrieval', '--checkpoint', f.stage2, '--data', f.data, '--language-model', f.lmFile], /--task retrieval: retrieval needs a stage-1 checkpoint/],
    [['eval', '--task', 'vqa', '--checkpoint', f.stage1, '--data', f.data], /--task vqa: vqa needs a stage-2 checkpoint/],
    [['eval', '--task', 'caption', '--checkpoint', f.stage1], /--checkpoint needs --data DIR/],
    [['eval', '--task', 'caption', '--checkpoint', join(f.work, 'nope'), '--data', f.data], /--checkpoint .*nope: no such file or directory/],
  ];
  for (const [args, message] of cases) {
    const r = blip2(...args);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^blip2: [^\n]+\n$/);
    expect(r.stderr.trim()).toMatch(message);
    expect(r.stdout).toBe('');
  }
}, 120_000);
