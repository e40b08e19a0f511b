// `blip2 report`: from run dirs whose metrics-<node>.jsonl files are written by the trainers' own metrics code
// (trainer/metrics.ts), the page and its PNGs (valid, of the planned size, with text drawn), the choice of one
// record per step, and the refusal of a run dir without metrics through the real command.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Resvg } from '@resvg/resvg-js';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { afterAll, expect, test } from 'vitest';
import { createTrainerMetrics, type StepRecord } from '../trainer';
import { CHART_HEIGHT, CHART_WIDTH, chartSpecs, PNG_SCALE, readRunMetrics, REPORT_CHARTS, specToSvg, stepsOf, svgToPng, writeRunReport } from './report';

const root = join(import.meta.dirname, '..');
const bin = join(root, 'bin', 'blip2.js');
const tmp = mkdtempSync(join(tmpdir(), 'blip2-report-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const phaseSeconds = { data: 0.1, forward_backward: 1.2, communication: 0.4, optimizer: 0.3 };

/**
 * A run dir as a 2-trainer job leaves it: each trainer's metrics write its JSONL. Steps 1-6 in generation 1; after
 * a failure at step 6 the world re-forms (generation 2, one trainer) and runs steps 5 and 6 again from the commit
 * at step 4, with other losses; then 7-8.
 */
function writeRun(dir: string, losses: (step: number, gen: number) => Record<string, number>): void {
  const node = (nodeId: string) => createTrainerMetrics({ registry: new Registry(), nodeId, runDir: dir });
  const a = node('trainer-0');
  const b = node('trainer-1');
  const rec = (step: number, generation: number, rank: number, worldSize: number): StepRecord => ({
    step, epoch: step > 4 ? 1 : 0, generation, rank, worldSize, losses: losses(step, generation), samples: 4, globalSamples: 4 * worldSize,
    learningRate: 1e-4, gradNorm: 1, phaseSeconds, allReduceBytes: 1000, allReduceSeconds: 0.1,
  });
  for (let s = 1; s <= 6; s++) {
    // trainer-1 is rank 0 of generation 1; its rank-1 peer writes the same step with other phase times.
    b.observeStep(rec(s, 1, 0, 2));
    a.observeStep(rec(s, 1, 1, 2));
  }
  for (let s = 5; s <= 8; s++) a.observeStep(rec(s, 2, 0, 1));
  // An in-job evaluation's line among the steps: not a step, and not a bad line.
  a.observeEval({ step: 8, epoch: 1, split: 'val', checkpointDir: join(dir, 'ck'), seconds: 1, figures: [{ task: 'caption', metric: 'CIDEr', value: 0.5, baseline: 0.2 }] });
}

const stage1 = (step: number, gen: number) => ({ itc: 2 - step / 10, itm: 0.7, itg: 3.6 - step / 20 + (gen === 2 ? 0.01 : 0) });

test('the report of a stage-1 run: index.html referencing one valid PNG per chart, of the planned size', async () => {
  const dir = join(tmp, 'stage1');
  writeRun(dir, stage1);
  writeFileSync(join(dir, 'summary.json'), JSON.stringify({ status: 'finished', jobId: 'report-test', step: 8, samples: 40, epochs: 2, wallSeconds: 12, skipped: {} }));
  const r = await writeRunReport(dir);
  expect(r.objectives).toEqual(['itc', 'itm', 'itg']);
  expect(r.steps).toBe(8);
  expect(r.badLines).toBe(0);
  expect(r.html).toBe(join(dir, 'report', 'index.html'));
  const html = readFileSync(r.html, 'utf8');
  expect(html).toContain('report-test');
  expect(html).not.toMatch(/<script|https?:\/\//); // self-contained: no scripts, nothing fetched
  expect(r.images.map((p) => p.slice(join(dir, 'report').length + 1))).toEqual(REPORT_CHARTS.map((c) => c.file));
  for (const c of REPORT_CHARTS) {
    expect(html).toContain(`<img src="${c.file}"`);
    const png = readFileSync(join(dir, 'report', c.file));
    expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    const meta = await sharp(png).metadata(); // decodes the header: a broken PNG throws
    expect([meta.format, meta.width, meta.height]).toEqual(['png', CHART_WIDTH * PNG_SCALE, CHART_HEIGHT * PNG_SCALE]);
    const stats = await sharp(png).stats(); // a chart, not a blank page
    expect(stats.channels.some((ch) => ch.min < 200)).toBe(true);
  }
  // Membership events: generation 1 with 2 trainers from step 1, generation 2 with 1 from step 5.
  expect(html).toMatch(/<tr><td>1<\/td><td>1<\/td><td>2<\/td><\/tr>\s*<tr><td>5<\/td><td>2<\/td><td>1<\/td><\/tr>/);
});

test('one record per step: rank 0\'s, the newest when a step was run again', () => {
  const dir = join(tmp, 'steps');
  writeRun(dir, stage1);
  const { lines } = readRunMetrics(dir);
  expect(lines).toHaveLength(16);
  const steps = stepsOf(lines);
  expect(steps.map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  expect(steps.every((s) => s.rank === 0)).toBe(true);
  expect(steps.map((s) => s.generation)).toEqual([1, 1, 1, 1, 2, 2, 2, 2]);
  expect(steps[4]!.losses.itg).toBe(stage1(5, 2).itg);
});

test('a stage-2 run reports its lm objective; a cut last line is left out and counted', async () => {
  const dir = join(tmp, 'stage2');
  writeRun(dir, (step) => ({ lm: 5.9 - step / 10 }));
  writeFileSync(join(dir, 'metrics-trainer-1.jsonl'), '{"time":"2026-01-01T00:00:00.000Z","step":7,"los', { flag: 'a' });
  const out = join(tmp, 'stage2-out');
  const r = await writeRunReport(dir, out);
  expect(r.objectives).toEqual(['lm']);
  expect(r.badLines).toBe(1);
  expect(existsSync(join(out, 'index.html'))).toBe(true);
  expect(readFileSync(join(out, 'index.html'), 'utf8')).toContain('1 (left out)');
});

test('the charts have their text drawn: the PNG differs from the same SVG rendered without any font', async () => {
  const dir = join(tmp, 'fonts');
  writeRun(dir, stage1);
  const svg = await specToSvg(chartSpecs(stepsOf(readRunMetrics(dir).lines))[0]!);
  expect(svg).toMatch(/<text[^>]*>step<\/text>/); // the axis title is in the SVG
  const noFonts = new Resvg(svg, { fitTo: { mode: 'width', value: CHART_WIDTH * PNG_SCALE }, font: { loadSystemFonts: false } }).render().asPng();
  const raw = async (png: Buffer) => sharp(png).raw().toBuffer();
  // Without a font file on the machine both would be the same: the report's images would have no axis labels.
  expect((await raw(svgToPng(svg))).equals(await raw(noFonts)), 'no font found: install fonts-dejavu-core').toBe(false);
});

test('`blip2 report` prints the page and the objectives; a run dir without metrics exits 2 with one line', () => {
  const dir = join(tmp, 'cli');
  writeRun(dir, stage1);
  const ok = spawnSync(process.execPath, [bin, 'report', dir, '--out', join(tmp, 'cli-out')], { encoding: 'utf8', timeout: 120_000 });
  expect(ok.status, ok.stderr).toBe(0);
  expect(ok.stdout).toContain(`report of 8 step(s), objectives itc, itm, itg: ${join(tmp, 'cli-out', 'index.html')}`);
  const empty = join(tmp, 'empty');
  mkdirSync(empty);
  const bad = spawnSync(process.execPath, [bin, 'report', empty], { encoding: 'utf8', timeout: 120_000 });
  expect(bad.status).toBe(2);
  expect(bad.stderr).toMatch(/^blip2: [^\n]*empty: no metrics-<node>\.jsonl files[^\n]*\n$/);
  expect(bad.stdout).toBe('');
});
