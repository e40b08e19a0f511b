/**
 * `npm run bench:train -- [--ranks 1,2,4] [--preset tiny] [--steps 8] [--skip 2] [--batch 4] [--image-size 32] [--epochs 1]`
 *
 * Throughput of the whole job (coordinator + N trainer processes started by the local launcher, gRPC ring, NATS)
 * at each world size, and the scaling efficiency throughput(N) / (N × throughput(1)), with N = 1 always measured in
 * the same run as the baseline. Figures come from rank 0's per-step metrics JSONL: samples/s over the measured
 * steps (the first `--skip` are warm-up), and the step time split into data, forward/backward, communication and
 * optimiser. Also the wall-clock rate from the end of step `--skip` to the last step, which adds what the step times
 * leave out (lease pulls, commits, epoch ends; `--epochs` spreads the steps over several epochs).
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { UsageError } from '../../common';
import { launchLocal } from '../launcher';

interface Args { ranks: number[]; preset: string; steps: number; skip: number; batch: number; imageSize: number; epochs: number }

function parseArgs(argv: string[]): Args {
  const a: Args = { ranks: [1, 2, 4], preset: 'tiny', steps: 8, skip: 2, batch: 4, imageSize: 32, epochs: 1 };
  const int = (flag: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i]!;
    const v = argv[i + 1];
    switch (f) {
      case '--ranks': a.ranks = (v ?? '').split(',').map((x) => int('--ranks', x, 1)); i++; break;
      case '--preset': a.preset = v ?? ''; i++; break;
      case '--steps': a.steps = int('--steps', v, 1); i++; break;
      case '--skip': a.skip = int('--skip', v, 0); i++; break;
      case '--batch': a.batch = int('--batch', v, 1); i++; break;
      case '--image-size': a.imageSize = int('--image-size', v, 16); i++; break;
      case '--epochs': a.epochs = int('--epochs', v, 1); i++; break;
      case '--help': case '-h':
        process.stdout.write('npm run bench:train -- [--ranks 1,2,4] [--preset tiny|small] [--steps 8] [--skip 2] [--batch 4] [--image-size 32] [--epochs 1]\n');
        process.exit(0);
      // falls through
      default: throw new UsageError(`unknown flag ${f} (try --help)`);
    }
  }
  if (a.skip >= a.steps) throw new UsageError(`--skip (${a.skip}) must be below --steps (${a.steps})`);
  if (!a.ranks.includes(1)) a.ranks.unshift(1); // the baseline, measured in the same run
  a.ranks = [...new Set(a.ranks)].sort((x, y) => x - y);
  return a;
}

interface StepLine { time: string; step: number; rank: number; globalSamples: number; stepSeconds: number; phaseSeconds: Record<string, number> }

async function runWorld(a: Args, worldSize: number) {
  const dir = mkdtempSync(join(tmpdir(), `blip2-bench-train-${worldSize}-`));
  // The steps spread over --epochs epochs, so that the wall-clock figure includes epoch ends.
  const samplesNeeded = worldSize * a.batch * Math.ceil((a.steps + 1) / a.epochs);
  const config = {
    job: { id: `bench-train-${worldSize}`, runDir: dir },
    model: { preset: a.preset },
    train: { epochs: a.epochs, batchSizePerTrainer: a.batch, maxSteps: a.steps },
    optim: { warmupSteps: 1 },
    checkpoint: { intervalSteps: a.steps },
    data: { synthSamples: Math.ceil(samplesNeeded / 0.9) + 2, synthImageSize: a.imageSize, samplesPerShard: 8 * a.batch, ackWaitMs: 600_000 },
    world: { trainers: worldSize, min: worldSize, max: worldSize, rendezvousSettleMs: 0 },
    metrics: { enabled: false },
  };
  const file = join(dir, 'bench.json');
  writeFileSync(file, JSON.stringify(config));
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const t0 = performance.now();
  const summary = await launchLocal({ configFile: file, out: sink, env: {} });
  const wallSeconds = (performance.now() - t0) / 1000;
  if (summary.status !== 'finished') throw new Error(`world of ${worldSize}: job ${summary.status}; logs in ${dir}/logs`);
  const lines: StepLine[] = [];
  for (let r = 0; r < worldSize; r++) {
    const text = readFileSync(join(dir, `metrics-trainer-${r}.jsonl`), 'utf8');
    for (const l of text.split('\n')) if (l.trim()) lines.push(JSON.parse(l) as StepLine);
  }
  const measured = lines.filter((l) => l.rank === 0 && l.step > a.skip).sort((x, y) => x.step - y.step);
  const seconds = measured.reduce((s, l) => s + l.stepSeconds, 0);
  const samples = measured.reduce((s, l) => s + l.globalSamples, 0);
  // Wall clock from the end of step `skip` to the end of the last step: also counts what happens between steps
  // (lease pulls at shard boundaries, commits, epoch ends), which the step times leave out.
  const before = lines.find((l) => l.rank === 0 && l.step === a.skip);
  const wall = before ? (Date.parse(measured.at(-1)!.time) - Date.parse(before.time)) / 1000 : NaN;
  const phases: Record<string, number> = {};
  for (const l of measured) for (const [k, v] of Object.entries(l.phaseSeconds)) phases[k] = (phases[k] ?? 0) + v / measured.length;
  return { worldSize, samplesPerSec: samples / seconds, wallSamplesPerSec: samples / wall, stepSeconds: seconds / measured.length, phases, steps: measured.length, wallSeconds, dir };
}

const a = parseArgs(process.argv.slice(2));
process.stdout.write(`bench:train: preset ${a.preset}, ${a.batch} samples per trainer per step, ${a.steps} steps (first ${a.skip} not measured), worlds ${a.ranks.join(', ')}\n`);
const results = [];
for (const n of a.ranks) {
  const r = await runWorld(a, n);
  process.stdout.write(`  world ${n}: ${r.samplesPerSec.toFixed(2)} samples/s over ${r.steps} steps, ${r.wallSamplesPerSec.toFixed(2)} by the wall clock (job wall time ${r.wallSeconds.toFixed(1)} s)\n`);
  results.push(r);
}
const base = results.find((r) => r.worldSize === 1)!;
const order = ['data', 'forward_backward', 'communication', 'optimizer'];
process.stdout.write('\n| trainers | samples/s | vs 1 trainer | scaling efficiency | wall samples/s | vs 1 trainer | step s | ' + order.join(' | ') + ' |\n');
process.stdout.write('|---|---|---|---|---|---|---|' + order.map(() => '---').join('|') + '|\n');
for (const r of results) {
  const speedup = r.samplesPerSec / base.samplesPerSec;
  const cells = order.map((k) => `${(r.phases[k] ?? 0).toFixed(3)} s (${(100 * (r.phases[k] ?? 0) / r.stepSeconds).toFixed(0)}%)`);
  process.stdout.write(`| ${r.worldSize} | ${r.samplesPerSec.toFixed(2)} | ${speedup.toFixed(2)}x | ${(speedup / r.worldSize).toFixed(2)} | ${r.wallSamplesPerSec.toFixed(2)} | ${(r.wallSamplesPerSec / base.wallSamplesPerSec).toFixed(2)}x | ${r.stepSeconds.toFixed(3)} | ${cells.join(' | ')} |\n`);
}
process.stdout.write('\nPhases are rank 0\'s mean per measured step; "vs 1 trainer" and the efficiency are against the 1-trainer run above.\n' +
  '"samples/s" counts the step times only; "wall samples/s" the wall clock from the end of step --skip to the last step (commits, lease pulls and epoch ends included).\n');
