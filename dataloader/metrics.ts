/**
 * Data-path metrics on a registry the process passes in (the training job and the coordinator each own one).
 * Created once per registry: asking again returns the same instruments.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { SKIP_REASONS, type SkipReason } from './errors';

export interface TrainerDataMetrics {
  /** blip2_trainer_data_samples_total: samples decoded, transformed and batched. */
  samples: Counter<string>;
  /** blip2_trainer_data_samples_skipped_total{reason}: bad samples skipped (see SkipReason). */
  samplesSkipped: Counter<'reason'>;
  /** The same counts as a plain object (for the trainer's metrics JSONL, which is written synchronously). */
  skippedByReason: Partial<Record<SkipReason, number>>;
  /** blip2_trainer_data_batches_total */
  batches: Counter<string>;
  /** blip2_trainer_data_shards_leased_total: descriptors pulled (redeliveries included). */
  shardsLeased: Counter<string>;
  /** blip2_trainer_data_shards_redelivered_total: descriptors pulled with a delivery count above 1. */
  shardsRedelivered: Counter<string>;
  /** blip2_trainer_data_shards_acked_total */
  shardsAcked: Counter<string>;
  /** blip2_trainer_data_shards_nacked_total */
  shardsNacked: Counter<string>;
  /** blip2_trainer_data_descriptors_rejected_total{reason}: descriptors that did not parse (terminated, removed). */
  descriptorsRejected: Counter<'reason'>;
  /** blip2_trainer_data_shards_held: leased descriptors not yet acked or nacked. */
  shardsHeld: Gauge<string>;
  /** blip2_trainer_data_prefetch_samples: decoded samples waiting in the prefetch queue plus those in flight. */
  prefetchSamples: Gauge<string>;
  /** blip2_trainer_data_decode_seconds: decode + transform time of one image, in a worker. */
  decodeSeconds: Histogram<string>;
  /** blip2_trainer_data_batch_wait_seconds: how long the consumer of the batch stream waited for a batch. */
  batchWaitSeconds: Histogram<string>;
}

export interface CoordinatorDataMetrics {
  /** blip2_coordinator_shards_published_total */
  shardsPublished: Counter<string>;
  /** blip2_coordinator_epochs_published_total */
  epochsPublished: Counter<string>;
  /** blip2_coordinator_shards_pending: published and not yet delivered (set by ShardPublisher.progress()). */
  shardsPending: Gauge<string>;
  /** blip2_coordinator_shards_in_flight: delivered and not yet acked. */
  shardsInFlight: Gauge<string>;
  /** blip2_coordinator_shards_exhausted: in the stream, never to be delivered again (max_deliver used up). */
  shardsExhausted: Gauge<string>;
}


/** Why a pulled descriptor is rejected (dataloader/jetstream.ts `rejectDescriptor`). */
export const DESCRIPTOR_REJECT_REASONS = ['not-json', 'schema'] as const;

const trainerCache = new WeakMap<Registry, TrainerDataMetrics>();
const coordinatorCache = new WeakMap<Registry, CoordinatorDataMetrics>();

export function trainerDataMetrics(registry: Registry): TrainerDataMetrics {
  let m = trainerCache.get(registry);
  if (m) return m;
  const registers = [registry];
  m = {
    samples: new Counter({ name: 'blip2_trainer_data_samples_total', help: 'Samples decoded, transformed and batched.', registers }),
    samplesSkipped: new Counter({ name: 'blip2_trainer_data_samples_skipped_total', help: 'Bad samples skipped, by reason.', labelNames: ['reason'], registers }),
    skippedByReason: {},
    batches: new Counter({ name: 'blip2_trainer_data_batches_total', help: 'Batches produced.', registers }),
    shardsLeased: new Counter({ name: 'blip2_trainer_data_shards_leased_total', help: 'Shard descriptors pulled from JetStream (redeliveries included).', registers }),
    shardsRedelivered: new Counter({ name: 'blip2_trainer_data_shards_redelivered_total', help: 'Shard descriptors pulled with a delivery count above 1.', registers }),
    shardsAcked: new Counter({ name: 'blip2_trainer_data_shards_acked_total', help: 'Shard descriptors acknowledged after their samples were committed.', registers }),
    shardsNacked: new Counter({ name: 'blip2_trainer_data_shards_nacked_total', help: 'Shard descriptors handed back for redelivery.', registers }),
    descriptorsRejected: new Counter({
      name: 'blip2_trainer_data_descriptors_rejected_total', labelNames: ['reason'], registers,
      help: 'Shard descriptors that did not parse, by reason (not-json, schema): terminated and removed from the queue.',
    }),
    shardsHeld: new Gauge({ name: 'blip2_trainer_data_shards_held', help: 'Leased shard descriptors not yet acked or nacked.', registers }),
    prefetchSamples: new Gauge({ name: 'blip2_trainer_data_prefetch_samples', help: 'Samples in flight in the decode workers or waiting in the prefetch queue.', registers }),
    decodeSeconds: new Histogram({
      name: 'blip2_trainer_data_decode_seconds', help: 'Decode and transform time of one image in a worker.', registers,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
    }),
    batchWaitSeconds: new Histogram({
      name: 'blip2_trainer_data_batch_wait_seconds', help: 'Time the batch stream consumer waited for the next batch.', registers,
      buckets: [0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    }),
  };
  // Every skip reason's series exists (at 0) from the start: dashboards and alerts see them all.
  for (const reason of SKIP_REASONS) m.samplesSkipped.inc({ reason }, 0);
  for (const reason of DESCRIPTOR_REJECT_REASONS) m.descriptorsRejected.inc({ reason }, 0);
  trainerCache.set(registry, m);
  return m;
}

export function coordinatorDataMetrics(registry: Registry): CoordinatorDataMetrics {
  let m = coordinatorCache.get(registry);
  if (m) return m;
  const registers = [registry];
  m = {
    shardsPublished: new Counter({ name: 'blip2_coordinator_shards_published_total', help: 'Shard descriptors published to JetStream.', registers }),
    epochsPublished: new Counter({ name: 'blip2_coordinator_epochs_published_total', help: 'Epoch plans published.', registers }),
    shardsPending: new Gauge({ name: 'blip2_coordinator_shards_pending', help: 'Shard descriptors published and not yet delivered.', registers }),
    shardsInFlight: new Gauge({ name: 'blip2_coordinator_shards_in_flight', help: 'Shard descriptors delivered and not yet acked.', registers }),
    shardsExhausted: new Gauge({ name: 'blip2_coordinator_shards_exhausted', help: 'Shard descriptors that used up max_deliver and will not be delivered again.', registers }),
  };
  coordinatorCache.set(registry, m);
  return m;
}

/** Samples skipped so far by the batch streams on `registry`, by reason (empty when none ran or none was skipped). */
export function dataSkipCounts(registry: Registry): Partial<Record<SkipReason, number>> {
  return { ...trainerCache.get(registry)?.skippedByReason };
}
