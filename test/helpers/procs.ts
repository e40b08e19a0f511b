// Helpers for tests that run the job's processes for real: spawn through tsx, collect output, wait for exit,
// SIGKILL, and a per-test job directory with a config file and a small synthetic dataset.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { writeSynthDataset } from '../../dataloader';

export const repoRoot = resolve(import.meta.dirname, '../..');

export interface Proc {
  child: ChildProcess;
  /** The script and its arguments. */
  label: string;
  /** stdout + stderr so far. */
  output(): string;
  /** Exit code (or 128 + signal number style string) once exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
}

/** Runs `tsx <script> ...args` from the repository root. */
export function runTs(script: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, script), ...args], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => r({ code, signal })),
  );
  return {
    child,
    label: `${script} ${args.join(' ')} ${JSON.stringify(env)}`,
    output: () => out,
    exited,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** Polls `f` until it returns a truthy value or the time runs out. */
export async function waitUntil<T>(what: string, f: () => T | Promise<T>, timeoutMs = 60_000, everyMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function exitWithin(p: Proc, ms: number, name = 'process'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const timer = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${name} did not exit within ${ms} ms; output:\n${p.output().slice(-4000)}`)), ms));
  return Promise.race([p.exited, timer]);
}

/**
 * A step time the trainer stand-in (test/fixtures/standin-trainer.ts) reads again at every step: `env` goes into the
 * environment of every stand-in of a job (those a launcher restarts too), and `pace(ms)` changes the step time from
 * their next step on. A test runs its job slowly while it injects its faults and quickly once they are done.
 */
export function standinPace(stepMs: number): { env: { STANDIN_STEP_MS: string; STANDIN_STEP_MS_FILE: string }; pace(stepMs: number): void } {
  const file = join(mkdtempSync(join(tmpdir(), 'blip2-pace-')), 'step-ms');
  const pace = (ms: number) => {
    writeFileSync(`${file}.new`, String(ms));
    renameSync(`${file}.new`, file); // whole: a stand-in never reads half a number
  };
  pace(stepMs);
  return { env: { STANDIN_STEP_MS: String(stepMs), STANDIN_STEP_MS_FILE: file }, pace };
}

/** The stand-in's step time once a test's faults are done. */
export const FAST_STEP_MS = 20;

export interface JobDir {
  dir: string;
  configFile: string;
  dataRoot: string;
}

/** A temporary job directory with a JSON config and a synthetic dataset (train split only is planned). */
export async function makeJobDir(config: Record<string, unknown>, data: { samples: number; shardSize: number; imageSize?: number }): Promise<JobDir> {
  const dir = mkdtempSync(join(tmpdir(), 'blip2-job-'));
  const dataRoot = join(dir, 'data');
  await writeSynthDataset({ out: dataRoot, samples: data.samples, shardSize: data.shardSize, imageSize: data.imageSize ?? 16, seed: 1 });
  const configFile = join(dir, 'job.json');
  const base = { job: { runDir: dir }, data: { root: dataRoot, datasets: ['train'] } };
  writeFileSync(configFile, JSON.stringify(deepMerge(base, config), null, 2));
  return { dir, configFile, dataRoot };
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] = av && typeof av === 'object' && !Array.isArray(av) && v && typeof v === 'object' && !Array.isArray(v)
      ? deepMerge(av as Record<string, unknown>, v as Record<string, unknown>)
      : v;
  }
  return out;
}
