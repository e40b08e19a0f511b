/**
 * The product's main path: `blip2 launch --config job.json` with the real trainer (trainer/main.ts), its own
 * nats-server, 2 trainers on the tiny preset and the synthetic dataset. Interrupted once with Ctrl-C (it stops
 * after the next commit), launched again with the same command, it continues to the end.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { checkpointLedger, trainSampleIds, type StepRecord } from './helpers/job';
import { makeJobDir, repoRoot, waitUntil } from './helpers/procs';

function launch(configFile: string) {
  const child = spawn(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'launch', '--config', configFile], {
    cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  return { child, output: () => out, exited };
}

test('a 2-trainer job runs to the end (across a Ctrl-C and a relaunch) and its summed loss falls well below its start', async () => {
  const epochs = 6;
  const j = await makeJobDir(
    {
      job: { id: 'job-train' },
      model: { preset: 'tiny' },
      train: { epochs, batchSizePerTrainer: 4 },
      optim: { lr: 0.003, warmupSteps: 2 },
      checkpoint: { intervalSteps: 4 },
      data: { samplesPerShard: 8, workers: 1 },
      world: { trainers: 2, min: 2, max: 2, rendezvousSettleMs: 300 },
      membership: { heartbeatMs: 200, timeoutMs: 5000 },
    },
    { samples: 40, shardSize: 16 }, // train: 36 samples
  );
  const first = launch(j.configFile);
  // Interrupt in epoch 2 (read from the trainer's metrics, as the display prints at most once a second).
  const jsonl = join(j.dir, 'metrics-trainer-0.jsonl');
  await waitUntil('a step of epoch 2', () => existsSync(jsonl) && /"epoch":1,/.test(readFileSync(jsonl, 'utf8')), 240_000, 50);
  first.child.kill('SIGINT');
  expect(await first.exited, first.output()).toBe(0);
  expect(first.output()).toMatch(/generation 1: world of 2/);
  expect(first.output()).toMatch(/epoch [12]\/6 {2}step \d+ {2}[\d.]+ samples\/s {2}itc [\d.]+ {2}itm [\d.]+ {2}itg [\d.]+ {2}ETA/);
  const stoppedAt = Number(/checkpoint at step (\d+) committed: stopping/.exec(first.output())?.[1]);
  expect(stoppedAt).toBeGreaterThan(0);
  expect(JSON.parse(readFileSync(join(j.dir, 'summary.json'), 'utf8'))).toMatchObject({ status: 'stopped', step: stoppedAt });

  const second = launch(j.configFile);
  expect(await second.exited, second.output()).toBe(0);
  expect(second.output()).toMatch(new RegExp(`continuing job job-train: epoch \\d, committed step ${stoppedAt}`));
  expect(second.output()).toContain('job job-train finished');
  const summary = JSON.parse(readFileSync(join(j.dir, 'summary.json'), 'utf8'));
  expect(summary).toMatchObject({ status: 'finished', samples: epochs * 36 });
  for (const check of checkpointLedger(summary.checkpointDir, trainSampleIds(j), epochs)) {
    expect(check).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
  }

  // Per-step global losses from the metrics JSONL (a step redone after the stop: its later record). Full global
  // batches (8 samples) only, since ITC's chance level is ln(global batch).
  const byStep = new Map<number, StepRecord>();
  for (const l of readFileSync(join(j.dir, 'metrics-trainer-0.jsonl'), 'utf8').trim().split('\n')) {
    const r = JSON.parse(l) as StepRecord;
    if (!byStep.has(r.step) || byStep.get(r.step)!.generation <= r.generation) byStep.set(r.step, r);
  }
  const full = [...byStep.values()].sort((a, b) => a.step - b.step).filter((s) => s.globalSamples === 8);
  expect(full.length).toBeGreaterThan(10);
  const sum = (s: StepRecord) => s.losses.itc! + s.losses.itm! + s.losses.itg!;
  const start = sum(full[0]!);
  const end = full.slice(-3).reduce((a, s) => a + sum(s), 0) / 3;
  expect(start).toBeGreaterThan(5);
  expect(end, `summed loss ${start.toFixed(3)} -> ${end.toFixed(3)}`).toBeLessThan(0.85 * start);
  expect(full.at(-1)!.losses.itg!).toBeLessThan(full[0]!.losses.itg! - 0.6);
});
