/**
 * Epoch planning: a pure function of (index, datasets, epoch, seed). Shards larger than `shardSizeSamples` are
 * split into sample ranges, then all ranges are shuffled with a generator seeded by (seed, epoch). Trainers pull
 * descriptors dynamically from JetStream, so the plan does not depend on the world size.
 */
import type { DatasetIndex } from './dataset-index';
import { descriptorId, type ShardDescriptor } from './descriptor';
import { DatasetError } from './errors';
import { seededRandom, shuffled } from './rng';

export interface PlanEpochOptions {
  index: DatasetIndex;
  /** Names of the datasets to train on. Default: every dataset whose split is not `val`/`test`. */
  datasets?: readonly string[];
  epoch: number;
  seed: number;
  /** Most samples in one descriptor; larger shards are split into ranges. Default 10,000 (one img2dataset tar). */
  shardSizeSamples?: number;
}

export function planEpoch(options: PlanEpochOptions): ShardDescriptor[] {
  const { index, epoch, seed } = options;
  const size = options.shardSizeSamples ?? 10_000;
  if (!Number.isInteger(size) || size < 1) throw new DatasetError(`shardSizeSamples must be a positive integer, got ${size}`);
  if (!Number.isInteger(epoch) || epoch < 0) throw new DatasetError(`epoch must be a non-negative integer, got ${epoch}`);
  if (!Number.isInteger(seed)) throw new DatasetError(`seed must be an integer, got ${seed}`);
  const wanted = options.datasets ?? index.datasets.filter((d) => d.split !== 'val' && d.split !== 'test').map((d) => d.name);
  const ranges: Omit<ShardDescriptor, 'order'>[] = [];
  for (const name of wanted) {
    const d = index.datasets.find((x) => x.name === name);
    if (!d) throw new DatasetError(`dataset ${JSON.stringify(name)} is not in the index (have: ${index.datasets.map((x) => x.name).join(', ')})`);
    for (const s of d.shards) {
      for (let start = 0; start < s.samples; start += size) {
        const end = Math.min(s.samples, start + size);
        const r = { v: 1 as const, epoch, seed, dataset: d.name, format: d.format, shard: s.path, start, end, ...(d.imageRoot ? { imageRoot: d.imageRoot } : {}) };
        ranges.push({ ...r, id: descriptorId(r) });
      }
    }
  }
  return shuffled(ranges, seededRandom('plan', seed, epoch)).map((r, order) => ({ ...r, order }));
}
