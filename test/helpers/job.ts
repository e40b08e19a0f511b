// A job run as separate real processes (coordinator/main.ts and a trainer entry) on a shared nats-server, with its
// state read from NATS KV and its per-step metrics from the trainers' JSONL files.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { JobStore, type JobState } from '../../coordinator/client';
import { loadIndex, planEpoch, SampleLedger, type ShardDescriptor } from '../../dataloader';
import { makeJobDir, runTs, type JobDir, type Proc } from './procs';

export interface StepRecord {
  step: number;
  epoch: number;
  generation: number;
  rank: number;
  loss: number;
  losses: Record<string, number>;
  globalSamples: number;
}

export interface TestJob extends JobDir {
  jobId: string;
  procs: Proc[];
  coordinator(extra?: string[]): Proc;
  trainer(nodeId: string, extra?: string[], env?: Record<string, string>): Proc;
  state(): Promise<JobState | null>;
  /** Per-step records of one node's metrics JSONL (every generation's, in file order). */
  steps(nodeId: string): StepRecord[];
  /** The epoch's plan, as the coordinator publishes it. */
  plan(epoch: number): ShardDescriptor[];
}

let jobNo = 0;

export async function createJob(o: {
  nc: NatsConnection;
  natsUrl: string;
  config: Record<string, unknown>;
  data: { samples: number; shardSize: number; imageSize?: number };
  trainerEntry?: string;
  name?: string;
}): Promise<TestJob> {
  const jobId = `${o.name ?? 'job'}-${process.pid}-${jobNo++}`;
  const dir = await makeJobDir(
    {
      job: { id: jobId, token: 'job-token' },
      nats: { url: o.natsUrl },
      metrics: { enabled: false },
      ...o.config,
    },
    o.data,
  );
  const procs: Proc[] = [];
  let store: JobStore | undefined;
  const cfg = JSON.parse(readFileSync(dir.configFile, 'utf8')) as { data?: { samplesPerShard?: number }; train?: { seed?: number } };
  return {
    ...dir,
    jobId,
    procs,
    coordinator(extra = []) {
      const p = runTs('coordinator/main.ts', ['--config', dir.configFile, ...extra], { BLIP2_NODE_ID: 'coordinator' });
      procs.push(p);
      return p;
    },
    trainer(nodeId, extra = [], env = {}) {
      // One engine thread each: several trainers share this machine's cores (as the launcher arranges).
      const p = runTs(o.trainerEntry ?? 'trainer/main.ts', ['--config', dir.configFile, ...extra], { BLIP2_NODE_ID: nodeId, BLIP2_ENGINE_THREADS: '1', ...env });
      procs.push(p);
      return p;
    },
    async state() {
      try {
        store ??= await JobStore.open(o.nc, jobId);
        return (await store.read())?.state ?? null;
      } catch {
        store = undefined; // the coordinator has not created the bucket yet
        return null;
      }
    },
    steps(nodeId) {
      const path = join(dir.dir, `metrics-${nodeId}.jsonl`);
      if (!existsSync(path)) return [];
      return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as StepRecord);
    },
    plan(epoch) {
      return planEpoch({
        index: loadIndex(join(dir.dataRoot, 'index.json')), datasets: ['train'], epoch,
        seed: cfg.train?.seed ?? 42, shardSizeSamples: cfg.data?.samplesPerShard ?? 16,
      });
    },
  };
}

/** Sample ids of every sample of the train split (what each epoch must contain exactly once). */
export function trainSampleIds(j: JobDir): string[] {
  const index = loadIndex(join(j.dataRoot, 'index.json'));
  const train = index.datasets.find((d) => d.name === 'train')!;
  // The synthetic dataset's sample keys are 9-digit ordinals numbered across the whole dataset.
  const ids: string[] = [];
  let n = 0;
  for (const s of train.shards) for (let k = 0; k < s.samples; k++) ids.push(`train/${s.path}/${String(n++).padStart(9, '0')}`);
  return ids;
}

/** Checks the ledger.json of a committed checkpoint: every epoch's samples exactly once. */
export function checkpointLedger(checkpointDir: string, expected: string[], epochs: number) {
  const ledger = JSON.parse(readFileSync(join(checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
  const l = new SampleLedger();
  return Array.from({ length: epochs }, (_, e) => {
    l.record(e, ledger[e] ?? []);
    return l.check(e, expected);
  });
}
