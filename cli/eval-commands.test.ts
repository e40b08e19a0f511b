// `blip2 eval` through the real command (bin/blip2.js): caption and VQA scores as a table and as JSON, and bad
// input (a missing file, a bad task, a results file that does not match its references) as one line with exit 2.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { scoreCaptionFiles } from '../trainer/eval';

const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
const tmp = mkdtempSync(join(tmpdir(), 'blip2-eval-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const write = (name: string, value: unknown) => {
  const p = join(tmp, name);
  writeFileSync(p, JSON.stringify(value));
  return p;
};

const refs = write('captions.json', {
  images: [{ id: 1 }, { id: 2 }, { id: 3 }],
  annotations: [
    { image_id: 1, id: 1, caption: 'A man riding a horse on a beach.' },
    { image_id: 1, id: 2, caption: 'A person rides a horse along the shore.' },
    { image_id: 2, id: 3, caption: 'Two dogs play in the snow.' },
    { image_id: 2, id: 4, caption: 'A pair of dogs running through snow.' },
    { image_id: 3, id: 5, caption: 'A plate of food on a wooden table.' },
  ],
});
const preds = write('results.json', [
  { image_id: 1, caption: 'a man riding a horse on the beach' },
  { image_id: 2, caption: 'two dogs running in the snow' },
  { image_id: 3, caption: 'a plate with food' },
]);

test('caption scores: --json prints one object with the COCO keys; the table shows the same figures', () => {
  const j = blip2('eval', '--task', 'caption', '--predictions', preds, '--references', refs, '--json');
  expect(j.status, j.stderr).toBe(0);
  const scores = JSON.parse(j.stdout) as Record<string, number>;
  expect(Object.keys(scores).sort()).toEqual(['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr', 'images']);
  expect(scores).toEqual(scoreCaptionFiles(preds, refs));
  expect(scores.Bleu_4).toBeGreaterThan(0);
  expect(scores.Bleu_4).toBeLessThan(scores.Bleu_1!);
  const t = blip2('eval', '--task', 'caption', '--predictions', preds, '--references', refs);
  expect(t.status, t.stderr).toBe(0);
  expect(t.stdout).toContain('caption scores, 3 images');
  expect(t.stdout).toContain(`  CIDEr   ${scores.CIDEr!.toFixed(4)}\n`);
  expect(t.stdout).toContain(`  Bleu_4  ${scores.Bleu_4!.toFixed(4)}\n`);
}, 120_000);

test('VQA accuracy from results and VQAv2 annotations', () => {
  const ten = (...a: string[]) => a.concat(Array<string>(10 - a.length).fill('other')).map((answer, i) => ({ answer, answer_id: i + 1 }));
  const anns = write('vqa-anns.json', { annotations: [
    { question_id: 7, answers: ten('2', '2', '2', '2') },
    { question_id: 8, answers: ten('red', 'red', 'red') },
  ] });
  const res = write('vqa-res.json', [{ question_id: 7, answer: 'Two' }, { question_id: 8, answer: 'red' }]);
  const r = blip2('eval', '--task', 'vqa', '--predictions', res, '--references', anns, '--json');
  expect(r.status, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({ overall: expect.closeTo(95, 12), questions: 2 }); // (1 + 0.9) / 2
  const missing = write('vqa-missing.json', [{ question_id: 7, answer: 'Two' }]);
  const m = blip2('eval', '--task', 'vqa', '--predictions', missing, '--references', anns);
  expect(m.status).toBe(2);
  expect(m.stderr).toMatch(/^blip2: .*vqa-missing\.json: answers 1 of the 2 questions of .*vqa-anns\.json/);
}, 120_000);

test('bad input: one line, exit 2', () => {
  const cases: Array<[string[], RegExp]> = [
    [['eval', '--task', 'caption', '--predictions', join(tmp, 'nope.json'), '--references', refs], /nope\.json: no such file or directory$/],
    [['eval', '--task', 'bleu', '--predictions', preds, '--references', refs], /argument 'bleu' is invalid\. Allowed choices are retrieval, caption, vqa, all/],
    [['eval', '--task', 'caption', '--predictions', preds], /give --predictions FILE and --references FILE/],
    [['eval', '--task', 'caption', '--predictions', write('short.json', [{ image_id: 1, caption: 'x' }]), '--references', refs], /short\.json: no caption for 2 of the 3 images/],
  ];
  for (const [args, message] of cases) {
    const r = blip2(...args);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^blip2: [^\n]+\n$/);
    expect(r.stderr.trim()).toMatch(message);
    expect(r.stdout).toBe('');
  }
}, 120_000);
