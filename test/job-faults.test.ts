/**
 * Faults in a real job (coordinator/main.ts + trainer/main.ts processes, gRPC collectives, a real nats-server):
 * a trainer SIGKILLed mid-epoch, and the coordinator SIGKILLed and restarted.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, expect, inject, test } from 'vitest';
import { checkpointLedger, createJob, trainSampleIds, type TestJob } from './helpers/job';
import { exitWithin, waitUntil } from './helpers/procs';

let nc: NatsConnection;
let current: TestJob | undefined;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(async (ctx) => {
  if (current && ctx.task.result?.state === 'fail') {
    for (const p of current.procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-4000)}\n`);
  }
  for (const p of current?.procs ?? []) p.kill('SIGKILL');
  current = undefined;
});

const job = async (name: string, epochs: number) =>
  (current = await createJob({
    nc, natsUrl: inject('natsUrl'), name,
    config: {
      model: { preset: 'tiny' },
      train: { epochs, batchSizePerTrainer: 4 },
      optim: { lr: 0.002, warmupSteps: 2 },
      checkpoint: { intervalSteps: 3 },
      // A lease's in-progress signals come from the trainer's main thread, which a CPU step blocks for a second
      // or more: ackWaitMs must stay well above a step, or a held descriptor is redelivered to another trainer.
      // (A killed trainer's descriptors do not wait for it: each new generation rebuilds the queue.)
      data: { samplesPerShard: 8, ackWaitMs: 30_000, workers: 1 },
      world: { min: 1, max: 4, rendezvousSettleMs: 500 },
      membership: { heartbeatMs: 200, timeoutMs: 2500 },
    },
    data: { samples: 40, shardSize: 16 }, // train: 36 samples, 5 descriptors per epoch
  }));

test('a trainer SIGKILLed mid-epoch: the survivor continues, a replacement is taken in, every sample of every epoch is committed once', async () => {
  const epochs = 4;
  const j = await job('job-kill', epochs);
  const coordinator = j.coordinator();
  const trainers = new Map([['a', j.trainer('a')], ['b', j.trainer('b')]]);
  const first = await waitUntil('a first commit by a world of 2', async () => {
    const s = await j.state();
    return s && s.world.length === 2 && (s.committed?.step ?? 0) >= 3 ? s : null;
  }, 90_000, 200);
  // Kill rank 0 (it writes the checkpoints) after its commit, mid-epoch.
  const victim = first.world[0]!.nodeId;
  const survivor = first.world[1]!.nodeId;
  await waitUntil('a step past the commit', () => j.steps(survivor).some((r) => r.step > first.committed!.step), 30_000);
  trainers.get(victim)!.kill('SIGKILL');
  const alone = await waitUntil('a generation without the victim', async () => {
    const s = await j.state();
    return s && s.generation > first.generation && s.world.length === 1 ? s : null;
  }, 30_000, 200);
  expect(alone.world[0]!.nodeId).toBe(survivor);
  expect(alone.reason).toMatch(new RegExp(`${victim}`)); // lost by heartbeat, or reported missing by the survivor
  await waitUntil('the survivor commits alone', async () => ((await j.state())?.committed?.step ?? 0) > (alone.committed?.step ?? 0), 60_000, 200);

  const replacement = j.trainer('c');
  const together = await waitUntil('the replacement in the world', async () => {
    const s = await j.state();
    return s && s.world.some((p) => p.nodeId === 'c') ? s : null;
  }, 60_000, 200);
  expect(together.world.map((p) => p.nodeId)).toEqual([survivor, 'c']);

  for (const [name, p] of [[survivor, trainers.get(survivor)!], ['c', replacement], ['coordinator', coordinator]] as const) {
    expect((await exitWithin(p, 120_000, name)).code, p.output().slice(-3000)).toBe(0);
  }
  const s = (await j.state())!;
  expect(s.status).toBe('finished');
  expect(s.committed!.samples).toBe(epochs * 36);
  for (const check of checkpointLedger(s.committed!.checkpointDir, trainSampleIds(j), epochs)) {
    expect(check).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
  }
  // The run dir's ledger.jsonl agrees with the checkpoint's ledger: every sample of every epoch once (rank 0 was
  // killed after a commit; a line it could not append is restored from the checkpoint by the next rank 0).
  const runLedger: Record<string, string[]> = {};
  for (const line of readFileSync(join(j.dir, 'ledger.jsonl'), 'utf8').trim().split('\n')) {
    const r = JSON.parse(line) as { epoch: number; ids: string[] };
    (runLedger[r.epoch] ??= []).push(...r.ids);
  }
  const ckLedger = JSON.parse(readFileSync(join(s.committed!.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
  for (let e = 0; e < epochs; e++) expect([...(runLedger[e] ?? [])].sort(), `ledger.jsonl, epoch ${e}`).toEqual([...ckLedger[e]!].sort());
  // The survivor trained in all three generations; the replacement only in the last.
  expect(new Set(j.steps(survivor).map((r) => r.generation)).size).toBeGreaterThanOrEqual(3);
  expect(j.steps('c').every((r) => r.generation === together.generation)).toBe(true);
});

test('the coordinator SIGKILLed and restarted mid-job: the job finishes', async () => {
  // Two epochs: the kill comes after the first commit (step 3 of about 10), and the restarted coordinator still
  // takes the job through an epoch's end to its finish.
  const epochs = 2;
  const j = await job('job-coord', epochs);
  let coordinator = j.coordinator();
  const a = j.trainer('a');
  const b = j.trainer('b');
  const before = await waitUntil('a commit by a world of 2', async () => {
    const s = await j.state();
    return s && s.world.length === 2 && (s.committed?.step ?? 0) >= 3 ? s : null;
  }, 90_000, 200);
  coordinator.kill('SIGKILL');
  await coordinator.exited;
  expect((await j.state())!.status).toBe('running'); // killed mid-job
  await new Promise((r) => setTimeout(r, 1000)); // trainers keep training; a commit waits for the coordinator
  coordinator = j.coordinator();
  for (const [name, p] of [['a', a], ['b', b], ['coordinator', coordinator]] as const) {
    expect((await exitWithin(p, 120_000, name)).code, p.output().slice(-3000)).toBe(0);
  }
  expect(coordinator.output()).toMatch(/job state recovered from KV/);
  const s = (await j.state())!;
  expect(s.status).toBe('finished');
  expect(s.generation).toBe(before.generation); // no trainer was lost while the coordinator was away
  for (const check of checkpointLedger(s.committed!.checkpointDir, trainSampleIds(j), epochs)) expect(check).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
});
