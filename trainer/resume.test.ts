// Resume equality at the loop level: a run stopped after a commit and resumed from that commit's checkpoint gives,
// step for step, the same losses as the run that was never interrupted (same data order, same negatives, same
// optimiser state and schedule). One trainer, in-memory work queue and commits, the synthetic dataset.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadIndex, planEpoch, writeSynthDataset, type DatasetIndex } from '../dataloader';
import { createTrainerCore, type BuiltTrainerCore } from './core';
import { LocalEpochData, LocalShardQueue } from './epoch-data';
import { createLocalGroup } from './local-group';
import { GenerationAbortedError, runGeneration, type StepSummary } from './loop';
import { initEngine, tf } from './engine';
import { LocalJob } from './testing/local-job';

const EPOCHS = 2;
let dataRoot: string;
let work: string;
let index: DatasetIndex;

beforeAll(async () => {
  await initEngine({ engine: 'cpu' }); // the tiny model runs faster on cpu than on wasm
  work = mkdtempSync(join(tmpdir(), 'blip2-resume-'));
  dataRoot = join(work, 'data');
  await writeSynthDataset({ out: dataRoot, samples: 20, shardSize: 5, imageSize: 32, seed: 3 });
  index = loadIndex(join(dataRoot, 'index.json'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function core(name: string): Promise<BuiltTrainerCore> {
  return createTrainerCore({
    preset: 'tiny', tokenizerPath: join(dataRoot, 'tokenizer.json'), seed: 11, epochs: EPOCHS,
    optim: { lr: 1e-3, minLr: 1e-4, warmupLr: 1e-5, warmupSteps: 3, schedule: 'cosine', weightDecay: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, gradClipNorm: 0 },
    checkpointEvery: 2, maxSteps: 0, checkpointRoot: join(work, name, 'checkpoints'), ledgerPath: join(work, `${name}-ledger.jsonl`),
  });
}

function setup() {
  const queue = new LocalShardQueue();
  const job = new LocalJob(queue, (epoch) => planEpoch({ index, epoch, seed: 11, shardSizeSamples: 5 }), EPOCHS);
  return { queue, job };
}

const batchOpts = (c: BuiltTrainerCore) => ({ dataRoot, tokenizer: c.tokenizer, batchSize: 4, workers: 0, transform: { imageSize: 32 } });

describe('resume from a checkpoint', () => {
  it('continues with exactly the losses of the uninterrupted run', async () => {
    // The uninterrupted run.
    const tensorsBefore = tf.memory().numTensors;
    const a = await core('a');
    const ja = setup();
    const lossesA: StepSummary[] = [];
    const outA = await runGeneration(a, {
      generation: 1, rank: 0, worldSize: 1, epoch: 0, restore: null, coll: createLocalGroup(1)[0]!, commits: ja.job,
      data: new LocalEpochData(ja.queue, batchOpts(a)),
    }, (s) => lossesA.push(s));
    expect(outA).toEqual({ kind: 'finished' });
    const steps = lossesA.length;
    expect(steps).toBeGreaterThanOrEqual(8);
    a.dispose();
    expect(tf.memory().numTensors).toBe(tensorsBefore); // a whole training run leaves no tensor behind

    // The same run, stopped after step 5 (its last commit is step 4), then a new process resumes from that commit.
    const b = await core('b');
    const jb = setup();
    const lossesB: StepSummary[] = [];
    const stop = new AbortController();
    const dataB = new LocalEpochData(jb.queue, batchOpts(b));
    await expect(runGeneration(b, {
      generation: 1, rank: 0, worldSize: 1, epoch: 0, restore: null, coll: createLocalGroup(1)[0]!, commits: jb.job, data: dataB, signal: stop.signal,
    }, (s) => {
      lossesB.push(s);
      if (s.step === 5) stop.abort('test stops the run');
    })).rejects.toThrow(GenerationAbortedError);
    dataB.close(); // what a dead trainer's leases do: they come back to the queue
    b.dispose();
    expect(jb.job.committed!.step).toBe(4);

    const c = await core('b');
    const lossesC: StepSummary[] = [];
    const outC = await runGeneration(c, {
      generation: 2, rank: 0, worldSize: 1, epoch: jb.job.epoch, restore: jb.job.committed, coll: createLocalGroup(1)[0]!, commits: jb.job,
      data: new LocalEpochData(jb.queue, batchOpts(c)),
    }, (s) => lossesC.push(s));
    expect(outC).toEqual({ kind: 'finished' });
    c.dispose();

    expect(lossesB.slice(0, 5)).toEqual(lossesA.slice(0, 5));
    expect(lossesC.map((s) => s.step)).toEqual(lossesA.slice(4).map((s) => s.step));
    expect(lossesC).toEqual(lossesA.slice(4)); // bit-identical losses, learning rates and gradient norms
    // The losses fall (the run learns something) and the ledger of commits holds every sample once per epoch.
    const first = lossesA[0]!.losses, last = lossesA.at(-1)!.losses;
    expect(last.itc + last.itm + last.itg).toBeLessThan(first.itc + first.itm + first.itg);
    const ledger = readFileSync(join(work, 'b-ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { epoch: number; ids: string[] });
    for (let e = 0; e < EPOCHS; e++) {
      const ids = ledger.filter((l) => l.epoch === e).flatMap((l) => l.ids);
      const expected = planEpoch({ index, epoch: e, seed: 11, shardSizeSamples: 5 }).reduce((n, d) => n + d.end - d.start, 0);
      expect(ids.length).toBe(expected);
      expect(new Set(ids).size).toBe(expected);
      // The final checkpoint's ledger.json (cumulative along its parents) says the same.
      const cumulative = JSON.parse(readFileSync(join(jb.job.committed!.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
      expect([...cumulative[e]!].sort()).toEqual([...ids].sort());
    }
  });
});
