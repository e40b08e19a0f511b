/**
 * The built-in demo (`blip2 launch` with no config) end to end with real trainers, shortened by flags (a small
 * dataset, one epoch per stage, a few language-model steps): stage 1, the frozen LM, stage 2 from stage 1, and the
 * evaluation tables, then a relaunch that finds every phase done and starts a new demo.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { repoRoot } from './helpers/procs';

function launch(runDir: string, extra: string[] = []) {
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/blip2.js'), 'launch', '--job.runDir', runDir, '--data.synthSamples', '60', '--train.epochs', '1',
      '--lm-steps', '10', '--world.rendezvousSettleMs', '300', ...extra],
    { cwd: repoRoot, env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

interface Report { stage: number; retrieval?: { img_r1: number; chance: { img_r1: number } }; caption?: { CIDEr: number; baseline: { CIDEr: number } }; vqa?: { accuracy: number; questions: number } }

describe('blip2 launch: the built-in demo', () => {
  test('trains stage 1, the LM and stage 2, then prints the retrieval, caption and VQA tables', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-demo-'));
    const l = launch(runDir);
    expect(await l.exited, l.output()).toBe(0);
    const out = l.output();
    // The phases in order, each on its own job.
    expect(out).toMatch(/== demo 1\/4: stage 1[\s\S]*job blip2-demo finished[\s\S]*== demo 2\/4[\s\S]*wrote .*opt-lm\.safetensors[\s\S]*== demo 3\/4[\s\S]*job blip2-demo-stage2 finished[\s\S]*== demo 4\/4/);
    expect(out).toContain(`stage 2 from the stage-1 checkpoint ${runDir}/checkpoints/step-`);
    // The three tables, each figure beside its chance level or baseline.
    expect(out).toMatch(/retrieval +img_r1 +[\d.]+ +[\d.]+/);
    expect(out).toMatch(/caption +CIDEr +[\d.]+ +[\d.]+/);
    expect(out).toMatch(/vqa +accuracy +[\d.]+ +[\d.]+/);
    expect(out).toMatch(/demo finished after .*: stage1 .*, lm .*, stage2 .*, eval /);
    const reports = JSON.parse(readFileSync(join(runDir, 'eval.json'), 'utf8')) as Report[];
    expect(reports.map((r) => r.stage)).toEqual([1, 2]);
    // 6 val images (10% of 60): chance R@1 of a random order over 6 images is 1/6.
    expect(reports[0]!.retrieval!.chance.img_r1).toBeCloseTo(100 / 6, 6);
    expect(reports[1]!.vqa!.questions).toBe(6 * 6);
    expect(JSON.parse(readFileSync(join(runDir, 'demo.json'), 'utf8'))).toMatchObject({ status: 'finished' });

    // A finished demo is not continued: the next launch starts a new one (only stage 1 here, to keep it short).
    const again = launch(runDir, ['--phases', 'stage1']);
    expect(await again.exited, again.output()).toBe(0);
    expect(again.output()).toContain(`the previous demo in ${runDir} finished; starting a new one`);
    expect(again.output()).toContain('job blip2-demo finished');
    expect(existsSync(join(runDir, 'stage2'))).toBe(false);
    expect(existsSync(join(runDir, 'opt-lm.safetensors'))).toBe(false);
  });
});
