// The job's shard queue on NATS JetStream: the stream, subject, durable consumer and ack wait that the
// coordinator's publisher and every trainer's consumer share, derived from the job config.
import type { NatsConnection } from '@nats-io/transport-node';
import { jobSubjects, type JobConfig } from '../common';
import type { ShardQueueOptions } from './jetstream';

/** The job's shard queue: the coordinator publishes to it, trainers build their ShardConsumer with the same options. */
export function shardQueueOptions(config: JobConfig, nc: NatsConnection): Required<Omit<ShardQueueOptions, 'maxDeliver' | 'maxAckPending'>> {
  const s = jobSubjects(config.job.id);
  return { nc, stream: s.shardStream, subject: s.shardSubject, durable: 'trainers', ackWaitMs: config.data.ackWaitMs };
}
