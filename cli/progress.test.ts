// `launch`'s progress view: the plain lines when the output is not a terminal (exactly today's format, at most one a
// second), and on a terminal a cli-progress bar whose ETA is averaged over the last reports, other lines above it.
import { Writable } from 'node:stream';
import { afterEach, expect, test, vi } from 'vitest';
import type { ProgressReport } from '../coordinator/client';
import { createProgressView } from './progress';

/** A stream that keeps what is written; `isTTY` makes it look like a terminal to the view and to cli-progress. */
function sink(isTTY: boolean): Writable & { text: () => string; isTTY?: boolean; columns?: number } {
  const chunks: string[] = [];
  const w = new Writable({ write(chunk, _enc, cb) { chunks.push(String(chunk)); cb(); } }) as Writable & { text: () => string; isTTY?: boolean; columns?: number };
  w.text = () => chunks.join('');
  if (isTTY) {
    w.isTTY = true;
    w.columns = 200;
  }
  return w;
}

const report = (step: number, samples: number, samplesPerSec: number): ProgressReport => ({
  nodeId: 'trainer-0', generation: 1, step, epoch: 0, losses: { itc: 2.0795, itm: 0.7021, itg: 3.6009 }, samples, samplesPerSec, time: 0,
});

afterEach(() => {
  vi.useRealTimers();
});

test('not a terminal: the plain lines, at most one a second, and no bar', () => {
  vi.useFakeTimers({ now: 1_000_000 });
  const out = sink(false);
  const view = createProgressView({ out, epochs: 2, totalSamples: 172, maxSteps: 0 });
  expect(view.bar).toBe(false);
  view.report(report(1, 8, 2));
  view.report(report(2, 16, 2)); // within the same second: not printed
  vi.setSystemTime(1_001_500);
  view.log('generation 2: world of 1 [trainer-0] (member trainer-1 lost)');
  view.report(report(3, 24, 2.5));
  view.stop();
  expect(out.text()).toBe(
    'epoch 1/2  step 1  2.0 samples/s  itc 2.0795  itm 0.7021  itg 3.6009  ETA 1m22s\n' +
      'generation 2: world of 1 [trainer-0] (member trainer-1 lost)\n' +
      'epoch 1/2  step 3  2.5 samples/s  itc 2.0795  itm 0.7021  itg 3.6009  ETA 59s\n',
  );
});

test('a terminal: a bar with the step, rate, losses and an ETA averaged over the reports; other lines above it', () => {
  vi.useFakeTimers({ now: 1_000_000 });
  const out = sink(true);
  const view = createProgressView({ out, epochs: 2, totalSamples: 100, maxSteps: 0 });
  expect(view.bar).toBe(true);
  view.report(report(1, 0, 1));
  for (const [s, samples] of [[10, 10], [20, 20]] as const) {
    vi.setSystemTime(1_000_000 + s * 1000);
    view.report(report(s, samples, 1));
  }
  // A burst: 10 samples in 1 s. The last interval alone would say 7 s; the average since the first report, 30
  // samples in 21 s, leaves 70 samples for 49 s, which cli-progress shows rounded to 5 s.
  vi.setSystemTime(1_021_000);
  view.report(report(21, 30, 10));
  view.log('generation 2: world of 1 [trainer-0] (member trainer-1 lost)');
  view.stop();
  const text = out.text();
  expect(text).toContain('generation 2: world of 1 [trainer-0] (member trainer-1 lost)\n');
  expect(text).toMatch(/epoch 1\/2  [█░]{24} 30%  step 21  10\.0 samples\/s  itc 2\.0795  itm 0\.7021  itg 3\.6009  ETA 50s/);
  expect(text.indexOf('generation 2')).toBeLessThan(text.lastIndexOf('step 21'));
  // Nothing after the end: a later line is plain.
  view.log('job blip2-demo finished after 21s');
  expect(out.text().endsWith('\njob blip2-demo finished after 21s\n')).toBe(true);
});

test('with train.maxSteps the bar counts steps; a finished job ends it at 100%', () => {
  vi.useFakeTimers({ now: 1_000_000 });
  const out = sink(true);
  const view = createProgressView({ out, epochs: 1, totalSamples: 1000, maxSteps: 40 });
  view.report(report(10, 80, 4));
  expect(view.bar).toBe(true);
  vi.advanceTimersByTime(500); // cli-progress's redraw timer
  expect(out.text()).toMatch(/ 25%  step 10 /);
  view.complete(); // the job finished: the bar ends full
  view.stop();
  expect(out.text()).toMatch(/ 100%  step 10 /);
});
