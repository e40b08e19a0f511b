/**
 * A job killed as a whole (coordinator and trainer SIGKILLed together) and started again continues from its state
 * in NATS KV and its last checkpoint, and reaches the same losses, step by step, as the same job run without
 * interruption. One trainer, so that the order in which descriptors are pulled is the plan's order in both runs.
 */
import { truncateSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, expect, inject, test } from 'vitest';
import { checkpointLedger, createJob, trainSampleIds, type StepRecord, type TestJob } from './helpers/job';
import { exitWithin, waitUntil } from './helpers/procs';

let nc: NatsConnection;
const jobs: TestJob[] = [];
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(async (ctx) => {
  for (const j of jobs) {
    if (ctx.task.result?.state === 'fail') for (const p of j.procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-4000)}\n`);
    for (const p of j.procs) p.kill('SIGKILL');
  }
  jobs.length = 0;
});

const EPOCHS = 2;
const job = async (name: string, intervalSteps = 4) => {
  const j = await createJob({
    nc, natsUrl: inject('natsUrl'), name,
    config: {
      model: { preset: 'tiny' },
      train: { epochs: EPOCHS, batchSizePerTrainer: 4 },
      optim: { lr: 0.002, warmupSteps: 2 },
      checkpoint: { intervalSteps },
      // Long, so no lease expires under a CPU step; the killed trainer's leases do not delay the restart, since
      // the coordinator rebuilds the queue for the new generation (uncommitted descriptors, in plan order).
      data: { samplesPerShard: 8, ackWaitMs: 30_000, workers: 0 },
      world: { min: 1, max: 1, rendezvousSettleMs: 0 },
      membership: { heartbeatMs: 200, timeoutMs: 2500 },
    },
    data: { samples: 40, shardSize: 16 }, // train: 36 samples, 9 steps of 4 per epoch
  });
  jobs.push(j);
  return j;
};

/** The losses of each step in the committed history: for a step trained twice, the later generation's. */
const lossesByStep = (records: StepRecord[]) => {
  const m = new Map<number, StepRecord>();
  for (const r of records) if (!m.has(r.step) || m.get(r.step)!.generation <= r.generation) m.set(r.step, r);
  return m;
};

test('a job SIGKILLed as a whole and started again reaches the same losses as an uninterrupted one', async () => {
  // The uninterrupted run.
  const u = await job('resume-ref');
  const uc = u.coordinator();
  const ut = u.trainer('t');
  expect((await exitWithin(ut, 120_000, 'trainer')).code, ut.output().slice(-3000)).toBe(0);
  await exitWithin(uc, 30_000, 'coordinator');
  const reference = lossesByStep(u.steps('t'));
  expect(reference.size).toBe(EPOCHS * 9);

  // The same job, killed whole two steps after its second commit, then started again.
  const k = await job('resume-kill');
  k.coordinator();
  const first = k.trainer('t');
  await waitUntil('two steps past the second commit', async () => {
    const s = await k.state();
    return (s?.committed?.step ?? 0) >= 8 && k.steps('t').some((r) => r.step >= 10);
  }, 120_000, 50);
  for (const p of k.procs) p.kill('SIGKILL');
  await first.exited;
  const killedAt = Math.max(...k.steps('t').map((r) => r.step));
  const committed = (await k.state())!.committed!.step;
  expect(killedAt).toBeGreaterThan(committed); // work after the commit is lost and redone
  k.coordinator();
  const again = k.trainer('t');
  expect((await exitWithin(again, 120_000, 'restarted trainer')).code, again.output().slice(-3000)).toBe(0);
  expect(again.output()).toMatch(new RegExp(`restored commit .*step=${committed}`));

  const resumed = lossesByStep(k.steps('t'));
  expect([...resumed.keys()].sort((a, b) => a - b)).toEqual([...reference.keys()].sort((a, b) => a - b));
  for (const [step, r] of reference) {
    const q = resumed.get(step)!;
    for (const objective of ['itc', 'itm', 'itg']) {
      expect(q.losses[objective], `step ${step} ${objective}`).toBeCloseTo(r.losses[objective]!, 4);
    }
  }
  const s = (await k.state())!;
  expect(s.status).toBe('finished');
  for (const check of checkpointLedger(s.committed!.checkpointDir, trainSampleIds(k), EPOCHS)) expect(check).toMatchObject({ ok: true });
});

test('a truncated checkpoint is refused when the job restores it, naming the file', async () => {
  const j = await job('truncated', 2);
  j.coordinator();
  const t = j.trainer('t');
  const committed = await waitUntil('a commit', async () => (await j.state())?.committed ?? null, 120_000, 50);
  for (const p of j.procs) p.kill('SIGKILL');
  await t.exited;
  const model = join(committed.checkpointDir, 'model.safetensors');
  truncateSync(model, Math.floor(statSync(model).size / 2));
  j.coordinator();
  const again = j.trainer('t');
  const { code } = await exitWithin(again, 120_000, 'restarted trainer');
  expect(code).not.toBe(0);
  expect(again.output()).toMatch(new RegExp(`${model.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: \\d+ bytes but the checkpoint recorded \\d+ \\(truncated\\); refusing to load`));
});
