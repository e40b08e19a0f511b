/**
 * `npm run bench:cli -- [--reps 5]`
 *
 * Start-up time of the `blip2` command (bin/blip2.js): the wall time of `blip2 --version`, `blip2 --help` and
 * `blip2 config --keys`, each the median of `--reps` runs, beside two baselines measured in the same run: bare Node
 * (`node -e 0`) and Node with tsx's loader (`node --import tsx -e 0`, what every `blip2` pays before its own code).
 * Each figure is printed as milliseconds and as a ratio to the tsx baseline (and to bare Node), so that runs on a
 * loaded or a different machine compare. The rounds interleave the commands, so that a change of load hits them all.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../../common';

const root = join(import.meta.dirname, '..', '..');
const bin = join(root, 'bin', 'blip2.js');

function parseReps(argv: string[]): number {
  let reps = 5;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--reps') {
      reps = Number(argv[++i]);
      if (!Number.isInteger(reps) || reps < 1) throw new UsageError(`--reps must be an integer >= 1, got ${JSON.stringify(argv[i])}`);
    } else {
      throw new UsageError(`unknown argument ${JSON.stringify(argv[i])} (usage: npm run bench:cli -- [--reps 5])`);
    }
  }
  return reps;
}

interface Case { name: string; args: string[] }

const CASES: Case[] = [
  { name: 'node -e 0', args: ['-e', '0'] },
  { name: 'node --import tsx -e 0', args: ['--import', 'tsx', '-e', '0'] },
  { name: 'blip2 --version', args: [bin, '--version'] },
  { name: 'blip2 --help', args: [bin, '--help'] },
  { name: 'blip2 config --keys', args: [bin, 'config', '--keys'] },
];

/** Milliseconds of one run; a run that fails stops the benchmark. */
function timeOnce(c: Case): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, c.args, { cwd: root, encoding: 'utf8', timeout: 60_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${c.name} exited ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  return ms;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const reps = parseReps(process.argv.slice(2));
// One run of each first, untimed: tsx's transform cache and the file cache are warm for every timed run.
for (const c of CASES) timeOnce(c);
const times = new Map<string, number[]>(CASES.map((c) => [c.name, []]));
for (let i = 0; i < reps; i++) for (const c of CASES) times.get(c.name)!.push(timeOnce(c));

const med = new Map(CASES.map((c) => [c.name, median(times.get(c.name)!)]));
const bare = med.get('node -e 0')!;
const tsx = med.get('node --import tsx -e 0')!;
process.stdout.write(`blip2 start-up, wall time, median of ${reps} (Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)})\n`);
process.stdout.write(`${'command'.padEnd(24)} ${'ms'.padStart(7)}  ${'vs tsx'.padStart(7)}  ${'vs node'.padStart(7)}\n`);
for (const c of CASES) {
  const ms = med.get(c.name)!;
  process.stdout.write(`${c.name.padEnd(24)} ${ms.toFixed(0).padStart(7)}  ${(ms / tsx).toFixed(2).padStart(6)}x  ${(ms / bare).toFixed(2).padStart(6)}x\n`);
}
