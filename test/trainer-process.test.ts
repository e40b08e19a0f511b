/**
 * The real trainer process (trainer/main.ts) in a real job: nats-server, the coordinator process, trainer processes
 * with the tiny model and gRPC collectives, the synthetic dataset. Rank 0 is SIGKILLed after a commit: the survivor
 * restores the commit and continues alone, a replacement is taken in, the job finishes, every sample is in the
 * final committed model exactly once per epoch, and the loss fell. The queue's ack wait (2.5 s) is about as long as
 * a step: the lease keeper's renewals from a worker thread keep a held shard from going to the other trainer.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, inject, test } from 'vitest';
import { JobStore, type JobState } from '../coordinator/client';
import { CaptionTokenizer, createBatchStream, loadIndex, localShardSource, planEpoch, SampleLedger } from '../dataloader';
import { exitWithin, makeJobDir, runTs, waitUntil, type Proc } from './helpers/procs';

let nc: NatsConnection;
const procs: Proc[] = [];

beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') for (const p of procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-4000)}\n`);
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

describe('trainer processes in a job', () => {
  test('--help describes the process and its keys without starting anything', async () => {
    const p = runTs('trainer/main.ts', ['--help']);
    procs.push(p);
    expect((await exitWithin(p, 30_000, 'trainer --help')).code).toBe(0);
    expect(p.output()).toMatch(/Usage: tsx trainer\/main\.ts \[--config FILE\]/);
    expect(p.output()).toMatch(/BLIP2_ENGINE=tensorflow\|wasm\|cpu/);
  });

  test('rank 0 SIGKILLed after a commit: the survivor restores it, a replacement joins, exactly-once ledger, loss falls', async () => {
    // Enough epochs that the replacement (started as soon as the survivor is alone) boots and is taken in before the
    // job ends: with 2 epochs a fast machine finished the job in ~4 s, before the new process had joined.
    const EPOCHS = 6;
    const jobId = `trainer-${process.pid}`;
    const j = await makeJobDir(
      {
        job: { id: jobId, token: 'job-token' },
        nats: { url: inject('natsUrl') },
        model: { preset: 'tiny' },
        train: { epochs: EPOCHS, batchSizePerTrainer: 4, seed: 42 },
        optim: { lr: 2e-3, warmupLr: 1e-4, warmupSteps: 2, minLr: 1e-4 },
        checkpoint: { intervalSteps: 2 },
        // An ack wait about as long as a step: the leases stay held because they are renewed off the main thread.
        data: { samplesPerShard: 8, ackWaitMs: 2500, workers: 0 },
        world: { min: 1, max: 2, rendezvousSettleMs: 400 },
        membership: { heartbeatMs: 200, timeoutMs: 2000 },
        metrics: { enabled: false },
        log: { level: 'info' },
      },
      { samples: 40, shardSize: 12 },
    );
    let store: JobStore | undefined;
    const state = async (): Promise<JobState | null> => {
      try {
        store ??= await JobStore.open(nc, jobId);
        return (await store.read())?.state ?? null;
      } catch {
        store = undefined;
        return null;
      }
    };
    const start = (script: string, node: string) => {
      const p = runTs(script, ['--config', j.configFile], { BLIP2_NODE_ID: node });
      procs.push(p);
      return p;
    };
    const coordinator = start('coordinator/main.ts', 'coordinator');
    const trainers = new Map([['a', start('trainer/main.ts', 'a')], ['b', start('trainer/main.ts', 'b')]]);
    await waitUntil('a commit by a world of 2', async () => {
      const s = await state();
      return s && s.world.length === 2 && (s.committed?.step ?? 0) >= 2 ? s : null;
    }, 90_000, 200);
    const before = (await state())!;
    const victim = before.world[0]!.nodeId;
    const survivor = before.world[1]!.nodeId;
    trainers.get(victim)!.kill('SIGKILL');
    const alone = await waitUntil('a generation without the victim', async () => {
      const s = await state();
      return s && s.generation > before.generation && s.world.length === 1 ? s : null;
    }, 30_000, 100);
    const stepAtLoss = alone.committed?.step ?? 0;
    const c = start('trainer/main.ts', 'c'); // booting takes seconds; it joins whenever it is up
    await waitUntil('the survivor commits on its own', async () => ((await state())?.committed?.step ?? 0) > stepAtLoss, 60_000, 200);
    await waitUntil('the replacement in the world', async () => (await state())?.world.some((p) => p.nodeId === 'c'), 60_000, 200);
    for (const [name, p] of [[survivor, trainers.get(survivor)!], ['c', c], ['coordinator', coordinator]] as const) {
      expect((await exitWithin(p, 120_000, name)).code, p.output().slice(-3000)).toBe(0);
    }
    const s = (await state())!;
    expect(s.status).toBe('finished');
    expect(trainers.get(survivor)!.output()).toMatch(/restored commit/);

    // Exactly once per epoch in the final committed checkpoint.
    const ledger = JSON.parse(readFileSync(join(s.committed!.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
    const index = loadIndex(join(j.dataRoot, 'index.json'));
    const l = new SampleLedger();
    for (let e = 0; e < EPOCHS; e++) {
      const expected: string[] = [];
      for await (const b of createBatchStream({
        source: localShardSource(planEpoch({ index, datasets: ['train'], epoch: e, seed: 42, shardSizeSamples: 8 })),
        dataRoot: j.dataRoot, tokenizer: CaptionTokenizer.fromFile(join(j.dataRoot, 'tokenizer.json')), batchSize: 8, workers: 0, transform: { imageSize: 16 },
      })) expected.push(...b.sampleIds);
      expect(expected).toHaveLength(36);
      l.record(e, ledger[e] ?? []);
      expect(l.check(e, expected), `epoch ${e}`).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
    }

    // ITM + ITG (which do not depend on the global batch size, unlike ITC) fell from the first steps to the last
    // (the survivor's JSONL covers the whole run).
    const lines = readFileSync(join(j.dir, `metrics-${survivor}.jsonl`), 'utf8').trim().split('\n')
      .map((x) => JSON.parse(x) as { step: number; losses: { itm: number; itg: number } });
    const mean = (xs: typeof lines) => xs.reduce((n, x) => n + x.losses.itm + x.losses.itg, 0) / xs.length;
    expect(mean(lines.slice(-3))).toBeLessThan(mean(lines.slice(0, 3)) - 0.1);
  });
});
