/**
 * Where a trainer's batches come from, per epoch: shard leases (from the job's JetStream work queue, or from an
 * in-memory work queue for single-process runs and tests) turned into batches by the dataloader's batch stream.
 *
 * Unlike `ShardConsumer.next()`, which waits while other trainers hold leases that could come back, a source here
 * runs dry as soon as nothing is left to pull: in synchronous training a rank must not block while its peers wait
 * for it in a collective. Whether the epoch is really over is decided by all ranks together (trainer/loop.ts).
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type Consumer, type JetStreamManager } from '@nats-io/jetstream';
import type { Registry } from 'prom-client';
import { createLogger, type Logger } from '../common';
import {
  createBatchStream, LeasedShard, parseDescriptor, rejectDescriptor, trainerDataMetrics, type CaptionTokenizer, type ShardDescriptor,
  type ShardSource, type TrainerDataMetrics, type TransformOptions,
} from '../dataloader';
import { ackSubjectOf, type LeaseKeeper } from './lease-keeper';
import type { EpochData, TrainLease } from './loop';

export interface BatchOptions {
  /** Folder the descriptors' paths are relative to (the dataset index folder). */
  dataRoot: string;
  tokenizer: CaptionTokenizer;
  /** Samples per batch on this rank. */
  batchSize: number;
  transform?: TransformOptions;
  /** Decode worker threads. Default 1 (0 = on the training thread). */
  workers?: number;
  registry?: Registry;
  logger?: Logger;
}

interface OpenOptions {
  cursorFor: (d: ShardDescriptor) => number | undefined;
  skip: (d: ShardDescriptor) => boolean;
}

function openStream<L extends TrainLease>(source: ShardSource<L>, b: BatchOptions) {
  const stream = createBatchStream<L>({
    source, dataRoot: b.dataRoot, tokenizer: b.tokenizer, batchSize: b.batchSize, transform: b.transform,
    workers: b.workers ?? 1, registry: b.registry, logger: b.logger,
  });
  return { next: () => stream.next(), close: () => stream.close() };
}

// ---------------------------------------------------------------------------------------------------------------
// In-memory work queue

/** A lease of the in-memory queue. */
export class LocalLease implements TrainLease {
  settled: 'ack' | 'nak' | undefined;
  constructor(
    readonly descriptor: ShardDescriptor,
    readonly cursor: number,
    private readonly queue: LocalShardQueue,
    readonly seq: number,
  ) {}
  async ack(): Promise<void> {
    if (this.settled) return;
    this.settled = 'ack';
    this.queue.settle(this, 'ack');
  }
  nak(): void {
    if (this.settled) return;
    this.settled = 'nak';
    this.queue.settle(this, 'nak');
  }
}

/**
 * An in-memory work queue of shard descriptors with explicit acks, shared by the ranks of one process: pulled in
 * publication order, a nacked descriptor goes back to its place in that order (so a single-rank run redelivers
 * exactly what it would have read next).
 */
export class LocalShardQueue {
  private pending: { seq: number; d: ShardDescriptor }[] = [];
  private readonly leased = new Set<LocalLease>();
  private nextSeq = 0;
  readonly acked: string[] = [];

  publish(descriptors: readonly ShardDescriptor[]): void {
    for (const d of descriptors) this.pending.push({ seq: this.nextSeq++, d });
  }

  pull(cursorFor: (d: ShardDescriptor) => number | undefined): LocalLease | null {
    const m = this.pending.shift();
    if (!m) return null;
    const cursor = Math.min(m.d.end, Math.max(m.d.start, cursorFor(m.d) ?? m.d.start));
    const lease = new LocalLease(m.d, cursor, this, m.seq);
    this.leased.add(lease);
    return lease;
  }

  settle(lease: LocalLease, how: 'ack' | 'nak'): void {
    this.leased.delete(lease);
    if (how === 'ack') this.acked.push(lease.descriptor.id);
    else {
      const at = this.pending.findIndex((m) => m.seq > lease.seq);
      this.pending.splice(at < 0 ? this.pending.length : at, 0, { seq: lease.seq, d: lease.descriptor });
    }
  }

  state(): { pending: number; ackPending: number } {
    return { pending: this.pending.length, ackPending: this.leased.size };
  }
}

/** One rank's EpochData over a LocalShardQueue (the epoch's descriptors are published into the queue by the caller). */
export class LocalEpochData implements EpochData<LocalLease> {
  private readonly held = new Set<LocalLease>();
  private closed = false;

  constructor(private readonly queue: LocalShardQueue, private readonly batch: BatchOptions) {}

  open(epoch: number, o: OpenOptions) {
    const source: ShardSource<LocalLease> = {
      next: async () => {
        for (;;) {
          if (this.closed) return null;
          const lease = this.queue.pull(o.cursorFor);
          if (!lease) return null;
          if (lease.descriptor.epoch !== epoch || o.skip(lease.descriptor) || lease.cursor >= lease.descriptor.end) {
            await lease.ack();
            continue;
          }
          this.held.add(lease);
          return lease;
        }
      },
    };
    return openStream(source, this.batch);
  }

  async queueState() {
    return this.queue.state();
  }

  heldLeases(): number {
    for (const l of [...this.held]) if (l.settled) this.held.delete(l);
    return this.held.size;
  }

  close(): void {
    this.closed = true;
    for (const l of this.held) l.nak();
    this.held.clear();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// JetStream work queue (the job's shard stream)

export interface JetStreamEpochDataOptions extends BatchOptions {
  nc: NatsConnection;
  /** The job's shard stream and its shared durable consumer. */
  stream: string;
  durable?: string;
  /** The queue's ack wait; leases send in-progress signals every third of it. */
  ackWaitMs: number;
  /** Longest single pull, ms (the server's minimum is 1000). Default 1000. */
  pollMs?: number;
  /** Renews held leases from a worker thread (recommended: steps block this thread). Default: none. */
  keeper?: LeaseKeeper;
}

/**
 * One rank's EpochData over the job's JetStream shard queue. With a registry it counts its leases as
 * `blip2_trainer_data_*` (see dataloader/metrics.ts): every descriptor pulled and parsed is leased (redelivered
 * when the server delivered it before), and ends acked or nacked; `shards_held` is leased − acked − nacked.
 */
export class JetStreamEpochData implements EpochData<LeasedShard> {
  private consumer: Consumer | undefined;
  private jsm: Promise<JetStreamManager> | undefined;
  private readonly held = new Set<LeasedShard>();
  private closed = false;
  private readonly log: Logger;
  private readonly metrics: TrainerDataMetrics | undefined;
  /** Leases not yet acked or nacked (those trained, and those being settled at once). */
  private live = 0;

  constructor(private readonly o: JetStreamEpochDataOptions) {
    this.log = o.logger ?? createLogger('epoch-data', { stream: o.stream });
    this.metrics = o.registry ? trainerDataMetrics(o.registry) : undefined;
  }

  private async getConsumer(): Promise<Consumer> {
    return (this.consumer ??= await jetstream(this.o.nc).consumers.get(this.o.stream, this.o.durable ?? 'trainers'));
  }

  open(epoch: number, opts: OpenOptions) {
    const heartbeatMs = Math.max(50, Math.floor(this.o.ackWaitMs / 3));
    let streamClosed = false;
    const source: ShardSource<LeasedShard> = {
      next: async () => {
        while (!this.closed && !streamClosed) {
          let msg;
          try {
            const consumer = await this.getConsumer();
            msg = await consumer.next({ expires: Math.max(1000, this.o.pollMs ?? 1000) });
            if (!msg) {
              const info = await consumer.info(false);
              if (info.num_pending === 0) return null; // nothing left to pull now: dry (see the file comment)
              continue;
            }
          } catch (e) {
            // A NATS outage (or a pull that lost its heartbeats): wait and pull again while the connection lives.
            if (this.o.nc.isClosed()) throw e;
            this.log.warn('shard queue not reachable; retrying', { error: (e as Error).message });
            await new Promise((r) => setTimeout(r, 500));
            continue;
          }
          let d: ShardDescriptor;
          try {
            d = parseDescriptor(msg.data);
          } catch (e) {
            // Terminated, removed from the stream (else it stays pending on servers before 2.10 and the epoch
            // never drains), counted.
            await rejectDescriptor(msg, e as Error, { jsm: () => (this.jsm ??= jetstreamManager(this.o.nc)), stream: this.o.stream, registry: this.o.registry, log: this.log });
            continue;
          }
          if ([...this.held].some((l) => l.descriptor.id === d.id)) {
            // The server can hand out a message again while an earlier delivery is still held here (a nack of a
            // previous generation's delivery racing with its redelivery). Training it twice would break
            // exactly-once: leave this copy alone; it disappears when the held lease is acked.
            this.log.warn('descriptor delivered again while held: ignoring the copy', { id: d.id, seq: msg.seq, deliveryCount: msg.info.deliveryCount });
            continue;
          }
          const reply = ackSubjectOf(msg);
          const lease = new LeasedShard(d, msg, heartbeatMs, opts.cursorFor(d), (l, how) => {
            this.held.delete(l);
            if (reply) this.o.keeper?.release(reply);
            this.live--;
            (how === 'ack' ? this.metrics?.shardsAcked : this.metrics?.shardsNacked)?.inc();
            this.metrics?.shardsHeld.set(this.live);
          });
          this.live++;
          this.metrics?.shardsLeased.inc();
          if (lease.deliveryCount > 1) this.metrics?.shardsRedelivered.inc();
          this.metrics?.shardsHeld.set(this.live);
          if (reply) this.o.keeper?.hold(reply);
          if (d.epoch < epoch || opts.skip(d) || lease.cursor >= d.end) {
            // Already committed (an ack that did not reach the server before a failure), or a stale epoch.
            this.log.warn('descriptor already committed: acking it', { id: d.id, epoch: d.epoch });
            await lease.ack();
            continue;
          }
          if (d.epoch > epoch) {
            this.log.warn('descriptor of a later epoch: handing it back', { id: d.id, epoch: d.epoch, training: epoch });
            lease.nak(1000);
            return null;
          }
          if (this.closed || streamClosed) {
            // A pull that was in flight when the stream closed: hand the lease straight back.
            lease.nak();
            return null;
          }
          this.held.add(lease);
          if (lease.deliveryCount > 1) this.log.info('descriptor redelivered', { id: d.id, deliveryCount: lease.deliveryCount, cursor: lease.cursor });
          return lease;
        }
        return null;
      },
    };
    const stream = openStream(source, this.o);
    return {
      next: stream.next,
      close: async () => {
        streamClosed = true;
        await stream.close();
      },
    };
  }

  async queueState() {
    const info = await (await this.getConsumer()).info(false);
    return { pending: info.num_pending, ackPending: info.num_ack_pending };
  }

  heldLeases(): number {
    return this.held.size;
  }

  close(): void {
    this.closed = true;
    for (const l of [...this.held]) l.nak();
    this.held.clear();
  }
}
