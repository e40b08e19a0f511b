/**
 * Epoch planning and publishing through the dataloader: the plan is a pure function of (index, datasets, epoch,
 * seed); descriptors go to the job's work-queue stream with their id as message id (dedup on republish).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import { UsageError, type JobConfig, type Logger } from '../common';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { checkShardFiles, encodeDescriptor, loadIndex, planEpoch, shardQueueOptions, ShardPublisher, type DatasetIndex } from '../dataloader';
import type { EpochPublisher } from './coordinator';

/** index.json of the job's data root; a clear error when it is missing. */
export function loadJobIndex(config: JobConfig): DatasetIndex {
  const path = join(config.data.root, 'index.json');
  if (!existsSync(path)) {
    throw new UsageError(`data.root ${config.data.root}: no index.json (write one with \`blip2 data index\` or \`blip2 data synth\`)`);
  }
  const index = loadIndex(path);
  for (const name of config.data.datasets) {
    if (!index.datasets.some((d) => d.name === name)) {
      throw new UsageError(`data.datasets names "${name}", which ${path} does not have (it has: ${index.datasets.map((d) => d.name).join(', ') || 'no dataset'})`);
    }
  }
  const selected = trainDatasets(config, index);
  if (!selected.length) {
    throw new UsageError(`${path} has no dataset to train on (${index.datasets.length ? `only val/test splits: ${index.datasets.map((d) => d.name).join(', ')}; name them in data.datasets to train on them` : 'its dataset list is empty'})`);
  }
  if (samplesPerEpoch(config, index) === 0) {
    throw new UsageError(`${path}: the dataset(s) ${selected.map((d) => d.name).join(', ')} hold no usable sample (every shard is empty); nothing to train on`);
  }
  // A shard no trainer can read would leave the job waiting forever: refuse it now, naming the file.
  checkShardFiles(index, config.data.root, path, config.data.datasets);
  return index;
}

/** Samples per epoch of the job's training datasets (after loadJobIndex's checks). */
export function samplesPerEpoch(config: JobConfig, index: DatasetIndex): number {
  return trainDatasets(config, index).reduce((n, d) => n + d.shards.reduce((m, s) => m + s.samples, 0), 0);
}

/** The datasets the plan trains on: data.datasets, or (planEpoch's default) every one that is not a val/test split. */
function trainDatasets(config: JobConfig, index: DatasetIndex) {
  return config.data.datasets.length
    ? index.datasets.filter((d) => config.data.datasets.includes(d.name))
    : index.datasets.filter((d) => d.split !== 'val' && d.split !== 'test');
}

export class DataEpochPublisher implements EpochPublisher {
  private readonly publisher: ShardPublisher;
  private ready?: Promise<void>;

  constructor(private readonly o: { nc: NatsConnection; config: JobConfig; registry?: Registry; log?: Logger }) {
    this.publisher = new ShardPublisher({ ...shardQueueOptions(o.config, o.nc), registry: o.registry, logger: o.log });
  }

  /** Every descriptor of an epoch, in plan order. */
  plan(epoch: number) {
    const c = this.o.config;
    return planEpoch({
      index: loadJobIndex(c),
      datasets: c.data.datasets.length ? c.data.datasets : undefined,
      epoch,
      seed: c.train.seed,
      shardSizeSamples: c.data.samplesPerShard,
    });
  }

  async publishEpoch(epoch: number): Promise<{ shardKeys: string[] }> {
    const descriptors = this.plan(epoch);
    this.ready ??= this.publisher.ensureStream();
    await this.ready;
    await this.publisher.publishEpoch(descriptors);
    return { shardKeys: descriptors.map((d) => d.id) };
  }

  /**
   * Purges the job's stream (queued and leased descriptors alike: leases of the old generation are void), then
   * publishes the epoch's uncommitted descriptors in plan order. The stream's duplicate window remembers message
   * ids across a purge, so each rebuild uses ids of its own (`<id>@g<generation>.<nonce>`): a rebuild interrupted
   * by a coordinator crash and done again must not have its descriptors dropped as duplicates.
   */
  async resetQueue(epoch: number, generation: number, committedShards: readonly string[]): Promise<{ shardKeys: string[] }> {
    const done = new Set(committedShards);
    const descriptors = this.plan(epoch).filter((d) => !done.has(d.id));
    this.ready ??= this.publisher.ensureStream();
    await this.ready;
    const q = shardQueueOptions(this.o.config, this.o.nc);
    const jsm = await jetstreamManager(this.o.nc);
    await jsm.streams.purge(q.stream);
    const js = jetstream(this.o.nc);
    const nonce = randomBytes(4).toString('hex');
    // In order, one at a time: the queue's order is the plan's order.
    for (const d of descriptors) await js.publish(q.subject, encodeDescriptor(d), { msgID: `${d.id}@g${generation}.${nonce}` });
    return { shardKeys: descriptors.map((d) => d.id) };
  }

  /** Updates the JetStream-side gauges (pending, in flight). */
  async refreshProgress(): Promise<void> {
    if (this.ready) await this.publisher.progress();
  }

  deleteStream(): Promise<void> {
    return this.publisher.deleteStream();
  }
}
