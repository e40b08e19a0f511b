/**
 * The product's main path: `blip2 launch --config job.json` with the real trainer (trainer/main.ts), its own
 * nats-server, 2 trainers on the tiny preset and the synthetic dataset, to the end.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { checkpointLedger, trainSampleIds, type StepRecord } from './helpers/job';
import { makeJobDir, repoRoot } from './helpers/procs';

test('a 2-trainer job on the synthetic dataset runs to the end and its summed loss falls well below its start', async () => {
  const epochs = 4;
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
  const child = spawn(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'launch', '--config', j.configFile], {
    cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  expect(code, out).toBe(0);
  expect(out).toMatch(/generation 1: world of 2/);
  expect(out).toMatch(/epoch 1\/4 {2}step \d+ {2}[\d.]+ samples\/s {2}itc [\d.]+ {2}itm [\d.]+ {2}itg [\d.]+ {2}ETA/);
  expect(out).toContain('job job-train finished');
  expect(out).toContain(`samples trained:   ${epochs * 36} (${epochs * 36} in this launch)`);

  const summary = JSON.parse(readFileSync(join(j.dir, 'summary.json'), 'utf8'));
  expect(summary).toMatchObject({ status: 'finished', samples: epochs * 36, generations: 1 });
  for (const check of checkpointLedger(summary.checkpointDir, trainSampleIds(j), epochs)) expect(check).toMatchObject({ ok: true });

  // Per-step global losses from the metrics JSONL; compare full global batches (8 samples) only, since ITC's
  // chance level is ln(global batch).
  const steps = readFileSync(join(j.dir, 'metrics-trainer-0.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as StepRecord);
  const full = steps.filter((s) => s.globalSamples === 8);
  expect(full.length).toBeGreaterThan(10);
  const sum = (s: StepRecord) => s.losses.itc! + s.losses.itm! + s.losses.itg!;
  const start = sum(full[0]!);
  const end = full.slice(-3).reduce((a, s) => a + sum(s), 0) / 3;
  expect(start).toBeGreaterThan(5);
  expect(end, `summed loss ${start.toFixed(3)} -> ${end.toFixed(3)}`).toBeLessThan(0.85 * start);
  expect(full.at(-1)!.losses.itg!).toBeLessThan(full[0]!.losses.itg! - 0.6);
});
