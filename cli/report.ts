/**
 * `blip2 report RUN_DIR`: a run's charts as PNG images and one HTML page that shows them, from the trainers'
 * `metrics-<node>.jsonl` files (one JSON object per step, written by trainer/metrics.ts) and `summary.json`.
 * Each chart is a vega-lite spec rendered to SVG by vega's headless View (no browser), then to PNG by resvg with
 * the system's fonts. No network, no scripts: the page and its images can be copied anywhere and opened.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { UsageError } from '../common';
import { REPORT_CHARTS } from './defaults';

export { REPORT_CHARTS };

/** One step of one trainer, as trainer/metrics.ts writes it (the fields the report reads). */
export interface StepLine {
  time: string;
  step: number;
  epoch: number;
  generation: number;
  rank: number;
  worldSize: number;
  losses: Record<string, number>;
  samplesPerSec: number;
  stepSeconds: number;
  phaseSeconds: Record<string, number>;
}

/** Size of each chart in CSS pixels (the SVG), and the PNG's scale over it (2: sharp on high-density screens). */
export const CHART_WIDTH = 800;
export const CHART_HEIGHT = 320;
export const PNG_SCALE = 2;

export interface RunReport {
  html: string;
  images: string[];
  objectives: string[];
  steps: number;
  /** Lines of the JSONL files that could not be read (a line cut by a killed process), left out. */
  badLines: number;
  /** False when no font file was found: the PNGs then have no text. */
  fontsFound: boolean;
}

/** Reads every `metrics-<node>.jsonl` of the run dir; refuses (exit 2) a run dir with none or with no step in them. */
export function readRunMetrics(runDir: string): { lines: StepLine[]; badLines: number } {
  if (!statSync(runDir).isDirectory()) throw new UsageError(`${runDir}: not a folder (give a job's run dir)`);
  const files = readdirSync(runDir).filter((f) => /^metrics-.+\.jsonl$/.test(f)).sort();
  if (files.length === 0) throw new UsageError(`${runDir}: no metrics-<node>.jsonl files (is it a job's run dir? the trainers write them there at every step)`);
  const lines: StepLine[] = [];
  let badLines = 0;
  for (const f of files) {
    for (const text of readFileSync(join(runDir, f), 'utf8').split('\n')) {
      if (!text.trim()) continue;
      let o: StepLine;
      try {
        o = JSON.parse(text) as StepLine;
      } catch {
        badLines++;
        continue;
      }
      if ((o as { kind?: unknown }).kind === 'eval') continue; // an in-job evaluation's line, not a step
      if (!Number.isFinite(o.step) || typeof o.losses !== 'object' || o.losses === null) {
        badLines++;
        continue;
      }
      lines.push(o);
    }
  }
  if (lines.length === 0) throw new UsageError(`${runDir}: the metrics files (${files.join(', ')}) hold no step yet`);
  return { lines, badLines };
}

/**
 * One record per step: rank 0's (the losses are the global batch's on every rank, its phase times are the ones
 * the launcher shows); when a step was run again (after a failure, from the last commit), the one of the latest
 * generation, then the newest.
 */
export function stepsOf(lines: StepLine[]): StepLine[] {
  const byStep = new Map<number, StepLine>();
  const better = (a: StepLine, b: StepLine) => {
    if ((a.rank === 0) !== (b.rank === 0)) return a.rank === 0;
    if (a.generation !== b.generation) return a.generation > b.generation; // a step run again is in a later generation
    return Date.parse(a.time) >= Date.parse(b.time);
  };
  for (const l of lines) {
    const held = byStep.get(l.step);
    if (!held || better(l, held)) byStep.set(l.step, l);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

const FONT = 'DejaVu Sans, Liberation Sans, Noto Sans, Arial, sans-serif';

function baseSpec(title: string, values: object[]): Partial<TopLevelSpec> & Record<string, unknown> {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: CHART_WIDTH,
    height: CHART_HEIGHT,
    autosize: { type: 'fit', contains: 'padding' },
    padding: 10,
    data: { values },
    config: { font: FONT, background: 'white', view: { stroke: null } },
  };
}

const stepAxis = { field: 'step', type: 'quantitative', title: 'step', axis: { format: 'd', tickMinStep: 1 } } as const;

/** The four charts' vega-lite specs, in REPORT_CHARTS's order. */
export function chartSpecs(steps: StepLine[]): TopLevelSpec[] {
  const loss = steps.flatMap((s) => Object.entries(s.losses).filter(([, v]) => Number.isFinite(v)).map(([objective, v]) => ({ step: s.step, objective, loss: v })));
  // Seconds since the first step (a continued job shows the gap while it was stopped).
  const t0 = Math.min(...steps.map((s) => Date.parse(s.time)).filter(Number.isFinite));
  const throughput = steps.filter((s) => Number.isFinite(Date.parse(s.time)))
    .map((s) => ({ seconds: (Date.parse(s.time) - t0) / 1000, step: s.step, samplesPerSec: s.samplesPerSec }))
    .sort((a, b) => a.seconds - b.seconds);
  const phases = steps.flatMap((s) => Object.entries(s.phaseSeconds ?? {}).map(([phase, seconds]) => ({ step: s.step, phase: phase.replace('_', '/'), seconds })));
  const membership = steps.flatMap((s) => [
    { step: s.step, series: 'world size', value: s.worldSize },
    { step: s.step, series: 'generation', value: s.generation },
  ]);
  const point = steps.length <= 60;
  return [
    {
      ...baseSpec(REPORT_CHARTS[0].title, loss),
      mark: { type: 'line', point },
      encoding: {
        x: stepAxis,
        y: { field: 'loss', type: 'quantitative', title: 'loss', scale: { zero: false } },
        color: { field: 'objective', type: 'nominal', title: 'objective' },
      },
    } as TopLevelSpec,
    {
      ...baseSpec(REPORT_CHARTS[1].title, throughput),
      mark: { type: 'line', point },
      encoding: {
        x: { field: 'seconds', type: 'quantitative', title: 'seconds since the first step' },
        y: { field: 'samplesPerSec', type: 'quantitative', title: 'samples/s (global batch)' },
      },
    } as TopLevelSpec,
    {
      ...baseSpec(REPORT_CHARTS[2].title, phases),
      mark: { type: 'area' },
      encoding: {
        x: stepAxis,
        y: { field: 'seconds', type: 'quantitative', title: 'seconds', stack: 'zero' },
        color: { field: 'phase', type: 'nominal', title: 'phase', sort: ['data', 'forward/backward', 'communication', 'optimizer'] },
      },
    } as TopLevelSpec,
    {
      ...baseSpec(REPORT_CHARTS[3].title, membership),
      encoding: {
        x: stepAxis,
        y: { field: 'value', type: 'quantitative', title: 'count', axis: { format: 'd', tickMinStep: 1 }, scale: { zero: true } },
        color: { field: 'series', type: 'nominal', title: '', sort: ['world size', 'generation'] },
      },
      // World size drawn wide under generation, so both show where they are equal.
      layer: [
        { transform: [{ filter: "datum.series === 'world size'" }], mark: { type: 'line', interpolate: 'step-after', strokeWidth: 6 } },
        { transform: [{ filter: "datum.series === 'generation'" }], mark: { type: 'line', interpolate: 'step-after', strokeWidth: 2, point } },
      ],
    } as TopLevelSpec,
  ];
}

/** Renders a vega-lite spec to SVG with vega's headless View (renderer 'none': nothing drawn but the SVG string). */
export async function specToSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Folders where Debian (fonts-dejavu-core and the like) and users keep font files. */
const FONT_DIRS = ['/usr/share/fonts', '/usr/local/share/fonts', join(homedir(), '.fonts'), join(homedir(), '.local/share/fonts')];

/** Whether a TrueType/OpenType font file is in the usual folders (resvg draws no text without one). */
export function systemFontsFound(): boolean {
  const walk = (dir: string, depth: number): boolean => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return false;
    }
    for (const e of entries) {
      if (e.isFile() && /\.(ttf|otf|ttc)$/i.test(e.name)) return true;
      if (e.isDirectory() && depth < 4 && walk(join(dir, e.name), depth + 1)) return true;
    }
    return false;
  };
  return FONT_DIRS.some((d) => walk(d, 0));
}

/** SVG → PNG at PNG_SCALE times the SVG's size, text set in the system's fonts. */
export function svgToPng(svg: string): Buffer {
  const r = new Resvg(svg, {
    fitTo: { mode: 'width', value: CHART_WIDTH * PNG_SCALE },
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' },
  });
  return r.render().asPng();
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(4) : String(v));

interface Summary {
  status?: string; jobId?: string; step?: number; epochs?: number; samples?: number; generations?: number;
  wallSeconds?: number; checkpointDir?: string | null; losses?: Record<string, number>; skipped?: Record<string, number>;
}

function readSummary(runDir: string): Summary | null {
  const p = join(runDir, 'summary.json');
  if (!existsSync(p)) return null;
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as Summary;
  } catch {
    return null;
  }
}

/** The page: the job's summary, the membership events, and the charts (PNG files beside it). */
function pageHtml(runDir: string, steps: StepLine[], objectives: string[], summary: Summary | null, badLines: number): string {
  const first = steps[0]!;
  const last = steps[steps.length - 1]!;
  const rows: [string, string][] = [];
  if (summary?.jobId) rows.push(['job', summary.jobId]);
  if (summary?.status) rows.push(['status', summary.status]);
  rows.push(['run dir', resolve(runDir)]);
  rows.push(['steps', `${first.step} to ${last.step} (${steps.length} recorded)`]);
  if (summary?.samples !== undefined) rows.push(['samples trained', String(summary.samples)]);
  if (summary?.epochs !== undefined) rows.push(['epochs', String(summary.epochs)]);
  if (summary?.wallSeconds !== undefined) rows.push(['wall time', `${Math.round(summary.wallSeconds)} s`]);
  rows.push(['objectives', objectives.join(', ')]);
  rows.push(['last losses', Object.entries(last.losses).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')]);
  if (summary?.checkpointDir) rows.push(['last checkpoint', summary.checkpointDir]);
  const skipped = Object.entries(summary?.skipped ?? {});
  if (skipped.length) rows.push(['samples skipped', skipped.map(([r, n]) => `${r} ${n}`).join(', ')]);
  if (badLines) rows.push(['unreadable metric lines', `${badLines} (left out)`]);
  // Membership events: the steps where the generation or the world size changed.
  const events: string[] = [];
  let prev: StepLine | undefined;
  for (const s of steps) {
    if (!prev || s.generation !== prev.generation || s.worldSize !== prev.worldSize) {
      events.push(`<tr><td>${s.step}</td><td>${s.generation}</td><td>${s.worldSize}</td></tr>`);
    }
    prev = s;
  }
  const title = `blip2 report: ${esc(summary?.jobId ?? resolve(runDir))}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${title}</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: ${CHART_WIDTH + 40}px; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
figure { margin: 0 0 2em 0; }
img { width: ${CHART_WIDTH}px; max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>${title}</h1>
<table>
${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('\n')}
</table>
<h2>Membership events</h2>
<table>
<tr><th>from step</th><th>generation</th><th>world size</th></tr>
${events.join('\n')}
</table>
${REPORT_CHARTS.map((c) => `<figure>
<img src="${c.file}" alt="${esc(c.title)}" width="${CHART_WIDTH}" height="${CHART_HEIGHT}">
<figcaption>${esc(c.caption)}</figcaption>
</figure>`).join('\n')}
</body>
</html>
`;
}

/** Writes `<out>/index.html` and the charts' PNGs (default out: `<runDir>/report`). */
export async function writeRunReport(runDir: string, out = join(runDir, 'report')): Promise<RunReport> {
  const { lines, badLines } = readRunMetrics(runDir);
  const steps = stepsOf(lines);
  const objectives = [...new Set(steps.flatMap((s) => Object.keys(s.losses)))];
  mkdirSync(out, { recursive: true });
  const specs = chartSpecs(steps);
  const images: string[] = [];
  for (let i = 0; i < specs.length; i++) {
    const png = svgToPng(await specToSvg(specs[i]!));
    const path = join(out, REPORT_CHARTS[i]!.file);
    writeFileSync(path, png);
    images.push(path);
  }
  const html = join(out, 'index.html');
  writeFileSync(html, pageHtml(runDir, steps, objectives, readSummary(runDir), badLines));
  return { html, images, objectives, steps: steps.length, badLines, fontsFound: systemFontsFound() };
}
