/**
 * `blip2 launch` end to end with trainer stand-ins (test/fixtures/standin-trainer.ts) in place of trainer/main.ts:
 * the demo's stage-1 phase (`--phases stage1`, smaller data than the demo's): the launcher's own nats-server, the
 * synthetic data, progress, summary, Ctrl-C after a commit, and a relaunch that continues the job from NATS KV and
 * its last checkpoint. The whole demo with real trainers: test/demo.test.ts.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { loadIndex, planEpoch, sampleId, SampleLedger } from '../dataloader';
import { repoRoot, waitUntil } from './helpers/procs';

function launch(runDir: string, stepMs: number, extra: string[] = []) {
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/blip2.js'), 'launch', '--trainer-entry', 'test/fixtures/standin-trainer.ts',
      '--job.runDir', runDir, '--data.ackWaitMs', '2000', '--membership.heartbeatMs', '100', '--membership.timeoutMs', '1500',
      '--world.rendezvousSettleMs', '300', '--phases', 'stage1', '--data.synthSamples', '96', '--data.synthImageSize', '32',
      '--train.epochs', '2', ...extra],
    { cwd: repoRoot, env: { ...process.env, STANDIN_STEP_MS: String(stepMs) }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

function trainSampleIds(runDir: string, epoch: number): string[] {
  const index = loadIndex(join(runDir, 'data', 'index.json'));
  return planEpoch({ index, datasets: ['train'], epoch, seed: 42, shardSizeSamples: 16 })
    .flatMap((d) => Array.from({ length: d.end - d.start }, (_, k) => sampleId(d, String(d.start + k))));
}

describe('blip2 launch (local)', () => {
  test('the built-in demo runs to the end, shows progress and ends with a summary', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-launch-'));
    const l = launch(runDir, 10);
    expect(await l.exited, l.output()).toBe(0);
    const out = l.output();
    expect(out).toContain('generating the synthetic dataset (96 samples, 32px)');
    expect(out).toMatch(/nats-server started at nats:\/\/127\.0\.0\.1:\d+/);
    expect(out).toMatch(/generation \d+: world of 2 \[trainer-[01], trainer-[01]\]/); // at once, or when the later one is taken in
    expect(out).toMatch(/epoch 1\/2 {2}step \d+ {2}[\d.]+ samples\/s {2}itc [\d.]+ {2}ETA/);
    const perEpoch = trainSampleIds(runDir, 0).length;
    expect(out).toContain('job blip2-demo finished');
    expect(out).toContain(`samples trained:   ${2 * perEpoch} (${2 * perEpoch} in this launch)`);
    const summary = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({ status: 'finished', jobId: 'blip2-demo', samples: 2 * perEpoch, epochs: 2 });
    expect(summary.checkpointDir).toMatch(new RegExp(`^${runDir}/checkpoints/step-\\d+$`));
    // Secrets stay out of the run dir.
    expect(readFileSync(join(runDir, 'job.resolved.json'), 'utf8')).toMatch(/"token": ""/);
  });

  test('Ctrl-C stops after the next commit; launching again continues the job to the end, every sample once', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-launch-'));
    const first = launch(runDir, 80);
    await waitUntil('progress', () => /epoch 1\/2 {2}step/.test(first.output()), 60_000);
    first.child.kill('SIGINT');
    expect(await first.exited, first.output()).toBe(0);
    expect(first.output()).toContain('stopping after the next committed checkpoint');
    const stoppedAt = Number(/checkpoint at step (\d+) committed: stopping/.exec(first.output())?.[1]);
    expect(stoppedAt).toBeGreaterThan(0);
    expect(first.output()).toMatch(/job blip2-demo stopped/);
    expect(JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8'))).toMatchObject({ status: 'stopped', step: stoppedAt });

    const second = launch(runDir, 10);
    expect(await second.exited, second.output()).toBe(0);
    expect(second.output()).toMatch(new RegExp(`continuing job blip2-demo: epoch 0, committed step ${stoppedAt}`));
    expect(second.output()).toContain('job blip2-demo finished');
    const summary = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8'));
    expect(summary.status).toBe('finished');
    const ledger = JSON.parse(readFileSync(join(summary.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
    const l = new SampleLedger();
    for (const e of [0, 1]) {
      l.record(e, ledger[e] ?? []);
      expect(l.check(e, trainSampleIds(runDir, e)), `epoch ${e}`).toMatchObject({ ok: true });
    }
  });
});
