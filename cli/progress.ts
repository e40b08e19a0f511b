/**
 * How `blip2 launch` shows a job's progress: on a terminal, a cli-progress bar (samples of the whole job, or steps
 * with train.maxSteps) with the step, samples/s, losses and an ETA smoothed over the last reports, the other lines
 * printed above it; elsewhere (a pipe, a file, a test), one plain line per report at most every second, as before.
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { ProgressReport } from '../coordinator/client';

export const fmtDuration = (s: number) => {
  if (!Number.isFinite(s) || s < 0) return '?';
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.round(s)}s`;
};
export const fmtLosses = (l: Record<string, number>) =>
  Object.entries(l).map(([k, v]) => `${k} ${v.toFixed(4)}`).join('  ') || '-';

export interface ProgressViewOptions {
  out: NodeJS.WritableStream;
  /** train.epochs. */
  epochs: number;
  /** Samples of the whole job (samples per epoch × epochs). */
  totalSamples: number;
  /** train.maxSteps (0 = none): the bar counts steps, and the plain lines show no ETA. */
  maxSteps: number;
  /** Reports the ETA is averaged over (cli-progress's etaBuffer). Default 20. */
  etaReports?: number;
}

export interface ProgressView {
  /** True when a bar is drawn (the output is a terminal). */
  readonly bar: boolean;
  /** A progress report of rank 0. */
  report(r: ProgressReport): void;
  /** Any other line (generations, stop messages): above the bar, or plain. */
  log(line: string): void;
  /** The job finished: the bar goes to 100% (the last report comes before the final commit). */
  complete(): void;
  /** Draws the bar a last time and ends it; later lines go straight to the output. */
  stop(): void;
}

/** A bar when `out` is a terminal, plain lines otherwise. */
export function createProgressView(o: ProgressViewOptions): ProgressView {
  const say = (line: string) => o.out.write(line + '\n');
  if ((o.out as { isTTY?: boolean }).isTTY !== true) return plainView(o, say);
  const byStep = o.maxSteps > 0;
  const multi = new MultiBar({
    stream: o.out as NodeJS.WriteStream,
    format: `epoch {epochs}  {bar} {percentage}%  step {step}  {rate} samples/s  {losses}  ETA {eta_formatted}`,
    barsize: 24,
    etaBuffer: o.etaReports ?? 20,
    hideCursor: false,
    gracefulExit: false, // Ctrl-C is the launcher's: the first one waits for a commit while the bar goes on
    clearOnComplete: false,
    linewrap: false,
  }, Presets.shades_classic);
  let bar: SingleBar | undefined;
  let stopped = false;
  const total = byStep ? o.maxSteps : Math.max(o.totalSamples, 1);
  return {
    bar: true,
    report(r) {
      if (stopped) return;
      const payload = { epochs: `${r.epoch + 1}/${o.epochs}`, step: r.step, rate: r.samplesPerSec.toFixed(1), losses: fmtLosses(r.losses) };
      const value = byStep ? r.step : r.samples;
      if (!bar) bar = multi.create(total, value, payload);
      else bar.update(value, payload);
    },
    log(line) {
      if (bar && !stopped) multi.log(line + '\n');
      else say(line);
    },
    complete() {
      if (bar && !stopped) bar.update(total);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      if (bar) {
        multi.update(); // the lines logged since the last redraw
        multi.stop();
      }
    },
  };
}

/** Today's plain lines (tests and log files parse them): one per report, at most one a second. */
function plainView(o: ProgressViewOptions, say: (line: string) => void): ProgressView {
  let lastPrinted = 0;
  return {
    bar: false,
    report(r) {
      if (Date.now() - lastPrinted < 1000) return;
      lastPrinted = Date.now();
      const remaining = o.maxSteps > 0 ? NaN : Math.max(0, o.totalSamples - r.samples);
      const eta = r.samplesPerSec > 0 ? remaining / r.samplesPerSec : NaN;
      say(`epoch ${r.epoch + 1}/${o.epochs}  step ${r.step}  ${r.samplesPerSec.toFixed(1)} samples/s  ${fmtLosses(r.losses)}  ETA ${fmtDuration(eta)}`);
    },
    log: say,
    complete() {},
    stop() {},
  };
}

/** Progress of a long piece of work made of named parts (`blip2 eval`: loading, then each task). */
export interface TaskProgress {
  /** `done` of `total` units of `part`. */
  update(part: string, done: number, total: number): void;
  /** Ends the display (the bar stays on screen). */
  stop(): void;
}

/**
 * On a terminal, one cli-progress bar per part with its count and ETA; elsewhere, one plain line when a part starts,
 * then at most one every 5 seconds, and its last count.
 */
export function createTaskProgress(out: NodeJS.WritableStream): TaskProgress {
  if ((out as { isTTY?: boolean }).isTTY === true) {
    const multi = new MultiBar({
      stream: out as NodeJS.WriteStream, format: '{part}  {bar} {value}/{total}  ETA {eta_formatted}', barsize: 24,
      hideCursor: false, gracefulExit: true, clearOnComplete: false, linewrap: false,
    }, Presets.shades_classic);
    const bars = new Map<string, SingleBar>();
    return {
      update(part, done, total) {
        const bar = bars.get(part) ?? multi.create(total, 0, { part: part.padEnd(18) });
        bars.set(part, bar);
        bar.setTotal(total);
        bar.update(done, { part: part.padEnd(18) });
      },
      stop: () => multi.stop(),
    };
  }
  let current = '';
  let last = 0;
  return {
    update(part, done, total) {
      const now = Date.now();
      if (part === current && done < total && now - last < 5000) return;
      current = part;
      last = now;
      out.write(`${part}: ${done}/${total}\n`);
    },
    stop: () => undefined,
  };
}
