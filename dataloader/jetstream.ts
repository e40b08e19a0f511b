/**
 * Shard dispatch over NATS JetStream.
 *
 * Protocol:
 * 1. The coordinator (`ShardPublisher`) creates a work-queue stream and ONE durable pull consumer that every
 *    trainer shares (a work-queue stream allows one unfiltered consumer), with explicit acks, `ack_wait`
 *    (nanoseconds on the wire), and `max_deliver` so a poison descriptor cannot loop forever.
 * 2. It publishes an epoch's descriptors with the descriptor id as `Nats-Msg-Id`, so a coordinator that restarts
 *    mid-publish does not duplicate work inside the stream's duplicate window.
 * 3. A trainer (`ShardConsumer`) pulls one descriptor at a time (no prefetch: a killed trainer holds only what it
 *    was reading). While it holds a lease, a timer sends in-progress signals (`working()`) every third of
 *    `ack_wait`, so long shards and a wait for the next checkpoint do not trigger redelivery.
 * 4. The training loop acks a lease (`ackAck`, confirmed by the server) only after a checkpoint containing all of
 *    its samples has committed; a cursor inside a partly consumed shard goes into the checkpoint, and
 *    `cursorFor` restores it when the descriptor comes back.
 * 5. A trainer that dies stops signalling; after `ack_wait` the server redelivers its descriptors to the others.
 * 6. A descriptor that does not parse is terminated (`term`), removed from the stream (servers before 2.10 keep
 *    terminated messages in a work queue), counted and logged: never redelivered.
 * 7. `next()` returns null when the epoch is drained: nothing pending and (by default) no other trainer holds a
 *    lease that could come back; see `endOfEpoch`.
 * A lease that outlives ack_wait without signals (a frozen process) is redelivered; the server still accepts a
 * late ack from the old holder (measured on 2.9.10), so the sample ledger is what shows such an overlap.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy, DeliverPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType,
  type Consumer, type JetStreamClient, type JetStreamManager, type JsMsg, type PubAck,
} from '@nats-io/jetstream';
import type { Registry } from 'prom-client';
import { createLogger, type Logger } from '../common';
import { encodeDescriptor, parseDescriptor, type ShardDescriptor } from './descriptor';
import { DescriptorError } from './errors';
import { coordinatorDataMetrics, DESCRIPTOR_REJECT_REASONS, trainerDataMetrics, type TrainerDataMetrics } from './metrics';

export interface ShardQueueOptions {
  nc: NatsConnection;
  /** JetStream stream name. Default `BLIP2_SHARDS`. */
  stream?: string;
  /** Subject the descriptors are published on. Default `blip2.shards`. */
  subject?: string;
  /** Durable consumer shared by all trainers. Default `trainers`. */
  durable?: string;
  /** How long a lease lives without an in-progress signal before redelivery, ms. Default 300,000 (5 min). */
  ackWaitMs?: number;
  /** Deliveries of one descriptor before the server gives up on it. Default 10. */
  maxDeliver?: number;
  /** Leases outstanding across all trainers. Default 1,000. */
  maxAckPending?: number;
}

interface ResolvedQueue {
  stream: string;
  subject: string;
  durable: string;
  ackWaitMs: number;
  maxDeliver: number;
  maxAckPending: number;
}

function resolveQueueOptions(o: ShardQueueOptions): ResolvedQueue {
  const r = {
    stream: o.stream ?? 'BLIP2_SHARDS',
    subject: o.subject ?? 'blip2.shards',
    durable: o.durable ?? 'trainers',
    ackWaitMs: o.ackWaitMs ?? 300_000,
    maxDeliver: o.maxDeliver ?? 10,
    maxAckPending: o.maxAckPending ?? 1000,
  };
  if (!(r.ackWaitMs >= 100)) throw new DescriptorError(`ackWaitMs must be >= 100, got ${r.ackWaitMs}`);
  if (!Number.isInteger(r.maxDeliver) || r.maxDeliver < 1) throw new DescriptorError(`maxDeliver must be a positive integer, got ${r.maxDeliver}`);
  return r;
}

const nanos = (ms: number) => Math.round(ms * 1_000_000);

export interface EpochProgress {
  /** Published and not yet delivered. */
  pending: number;
  /** Delivered and not yet acked (leases held, or waiting for redelivery). */
  inFlight: number;
  /** Messages still in the stream (work-queue: acked ones are removed). */
  remaining: number;
  /**
   * In the stream but neither pending nor in flight: descriptors that used up `max_deliver` (their samples are
   * lost to this epoch unless republished). The coordinator should log and alert on this.
   */
  exhausted: number;
}

export interface ShardPublisherOptions extends ShardQueueOptions {
  /** Coordinator registry for `blip2_coordinator_*` metrics. Default: none. */
  registry?: Registry;
  /** Publishes in flight at once. Default 256. */
  publishWindow?: number;
  logger?: Logger;
}

/** The coordinator side: creates the stream and the shared consumer, publishes epoch plans. */
export class ShardPublisher {
  private readonly q: ResolvedQueue;
  private readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;
  private readonly log: Logger;
  private readonly window: number;
  private readonly registry: Registry | undefined;

  constructor(private readonly options: ShardPublisherOptions) {
    this.q = resolveQueueOptions(options);
    this.js = jetstream(options.nc);
    this.log = options.logger ?? createLogger('shard-publisher', { stream: this.q.stream });
    this.window = options.publishWindow ?? 256;
    this.registry = options.registry;
  }

  private async manager(): Promise<JetStreamManager> {
    return (this.jsm ??= await jetstreamManager(this.options.nc));
  }

  /** Creates (or updates) the work-queue stream and the shared durable consumer. Idempotent. */
  async ensureStream(): Promise<void> {
    const jsm = await this.manager();
    const streamConfig = {
      name: this.q.stream,
      subjects: [this.q.subject],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: nanos(120_000),
    };
    try {
      await jsm.streams.info(this.q.stream);
      await jsm.streams.update(this.q.stream, { subjects: streamConfig.subjects, duplicate_window: streamConfig.duplicate_window });
    } catch (e) {
      if (!/not found/i.test((e as Error).message)) throw e;
      await jsm.streams.add(streamConfig);
    }
    const consumerConfig = {
      durable_name: this.q.durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(this.q.ackWaitMs),
      max_deliver: this.q.maxDeliver,
      max_ack_pending: this.q.maxAckPending,
    };
    try {
      await jsm.consumers.info(this.q.stream, this.q.durable);
      await jsm.consumers.update(this.q.stream, this.q.durable, {
        ack_wait: consumerConfig.ack_wait, max_deliver: consumerConfig.max_deliver, max_ack_pending: consumerConfig.max_ack_pending,
      });
    } catch (e) {
      if (!/not found/i.test((e as Error).message)) throw e;
      await jsm.consumers.add(this.q.stream, consumerConfig);
    }
    this.log.info('shard stream ready', { subject: this.q.subject, durable: this.q.durable, ackWaitMs: this.q.ackWaitMs, maxDeliver: this.q.maxDeliver });
  }

  /** Publishes descriptors (a window of publishes in flight); returns how many the stream stored as new. */
  async publishEpoch(descriptors: readonly ShardDescriptor[]): Promise<{ published: number; duplicates: number }> {
    let published = 0, duplicates = 0;
    const metrics = this.registry ? coordinatorDataMetrics(this.registry) : undefined;
    for (let i = 0; i < descriptors.length; i += this.window) {
      const acks: PubAck[] = await Promise.all(
        descriptors.slice(i, i + this.window).map((d) => this.js.publish(this.q.subject, encodeDescriptor(d), { msgID: d.id })),
      );
      for (const a of acks) a.duplicate ? duplicates++ : published++;
    }
    metrics?.shardsPublished.inc(published);
    metrics?.epochsPublished.inc();
    this.log.info('epoch published', { epoch: descriptors[0]?.epoch, descriptors: descriptors.length, published, duplicates });
    return { published, duplicates };
  }

  /** Where the current work stands (also sets the coordinator's pending/in-flight gauges). */
  async progress(): Promise<EpochProgress> {
    const jsm = await this.manager();
    const [ci, si] = await Promise.all([jsm.consumers.info(this.q.stream, this.q.durable), jsm.streams.info(this.q.stream)]);
    const p = {
      pending: ci.num_pending, inFlight: ci.num_ack_pending, remaining: si.state.messages,
      exhausted: Math.max(0, si.state.messages - ci.num_pending - ci.num_ack_pending),
    };
    if (this.registry) {
      const m = coordinatorDataMetrics(this.registry);
      m.shardsPending.set(p.pending);
      m.shardsInFlight.set(p.inFlight);
      m.shardsExhausted.set(p.exhausted);
    }
    return p;
  }

  /** Deletes the stream (and its consumer): the end of a job, or a test's cleanup. */
  async deleteStream(): Promise<void> {
    const jsm = await this.manager();
    await jsm.streams.delete(this.q.stream).catch(() => false);
  }
}

export interface ShardConsumerOptions extends ShardQueueOptions {
  /** Trainer registry for `blip2_trainer_data_*` metrics. Default: none. */
  registry?: Registry;
  /** In-progress signal period while a lease is held, ms. Default a third of `ackWaitMs`. */
  heartbeatMs?: number;
  /** Longest single pull request, ms; also how often an idle trainer checks for the end of the epoch. Default and minimum 2,000. */
  pollMs?: number;
  /**
   * When `next()` reports the end of the epoch (null):
   * - `all-acked` (default): nothing pending and no lease held by another trainer (one that dies comes back
   *   after ack_wait, so this trainer can finish the epoch alone);
   * - `queue-empty`: as soon as nothing is pending, even while other trainers hold leases. A synchronous
   *   data-parallel loop wants this one: with `all-acked` a trainer would wait for leases that its peers ack only
   *   after a checkpoint that needs this trainer's steps. Leases of a dead trainer are then picked up after the
   *   loop's rollback, by the next generation's streams.
   */
  endOfEpoch?: 'all-acked' | 'queue-empty';
  /** The committed cursor of a descriptor (from the last checkpoint), if it was partly consumed. */
  cursorFor?: (descriptor: ShardDescriptor) => number | undefined;
  logger?: Logger;
}

/** A descriptor held by this trainer until `ack()` (after a checkpoint commits its samples) or `nak()`. */
export class LeasedShard {
  /** First ordinal still to read: the committed cursor, or the descriptor's start. */
  cursor: number;
  private heartbeat: NodeJS.Timeout | undefined;
  private settled = false;
  /** The ack was not confirmed by the server (an outage): the descriptor will come back and be skipped. */
  ackLost = false;

  constructor(
    readonly descriptor: ShardDescriptor,
    private readonly msg: JsMsg,
    heartbeatMs: number,
    cursor: number | undefined,
    private readonly onSettle: (lease: LeasedShard, how: 'ack' | 'nak') => void,
  ) {
    this.cursor = Math.min(descriptor.end, Math.max(descriptor.start, cursor ?? descriptor.start));
    this.heartbeat = setInterval(() => this.working(), heartbeatMs);
    this.heartbeat.unref();
  }

  /** How many times the server has delivered this descriptor (1 the first time). */
  get deliveryCount(): number {
    return this.msg.info.deliveryCount;
  }

  /** True until acked or nacked. */
  get held(): boolean {
    return !this.settled;
  }

  /** Resets the server's ack timer (sent automatically every `heartbeatMs` while held). */
  working(): void {
    if (this.settled) return;
    try {
      this.msg.working();
    } catch {
      // The connection is closing; the lease will be redelivered after ack_wait.
    }
  }

  /**
   * The descriptor's samples are all in a committed checkpoint: remove it from the queue (server-confirmed).
   * Through a NATS outage the confirmation is retried (3 tries); an ack that still does not get through is left to
   * the ledger: the descriptor comes back and its committed samples are skipped (`ackLost` is then true).
   */
  async ack(): Promise<void> {
    if (!this.settle('ack')) return;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.msg.ackAck();
        return;
      } catch {
        if (attempt >= 3) {
          this.ackLost = true;
          return;
        }
        await new Promise((r) => setTimeout(r, 500 * attempt));
      }
    }
  }

  /** Hand the descriptor back for redelivery (after `delayMs`), e.g. on rollback or shutdown. */
  nak(delayMs?: number): void {
    if (this.settle('nak')) this.msg.nak(delayMs);
  }

  private settle(how: 'ack' | 'nak'): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearInterval(this.heartbeat);
    this.onSettle(this, how);
    return true;
  }
}

/**
 * A pulled message that is not a valid descriptor: terminated (never redelivered), removed from the stream (servers
 * before 2.10 keep a terminated message in a work queue, where it would count as pending forever and the epoch
 * would never drain), counted by reason and logged.
 */
export async function rejectDescriptor(
  msg: JsMsg, error: Error, o: { jsm: () => Promise<JetStreamManager>; stream: string; registry?: Registry; log: Logger },
): Promise<void> {
  const reason: (typeof DESCRIPTOR_REJECT_REASONS)[number] = /^descriptor is not JSON/.test(error.message) ? 'not-json' : 'schema';
  // Counted and terminated at once (before any await), so that a reader that stops right after sees it counted.
  if (o.registry) trainerDataMetrics(o.registry).descriptorsRejected.inc({ reason });
  try {
    msg.term(`descriptor rejected: ${error.message.slice(0, 200)}`);
  } catch {
    // the connection is closing: the removal below (or the next pull) settles it
  }
  try {
    await (await o.jsm()).streams.deleteMessage(o.stream, msg.seq, false);
  } catch (e) {
    o.log.warn('could not remove a rejected descriptor from the stream', { seq: msg.seq, error: (e as Error).message });
  }
  o.log.error('descriptor rejected (terminated and removed)', { seq: msg.seq, reason, error: error.message });
}

/** The trainer side: pulls descriptors one at a time from the shared durable consumer. */
export class ShardConsumer {
  private readonly q: ResolvedQueue;
  private readonly js: JetStreamClient;
  private consumer: Consumer | undefined;
  private readonly held = new Set<LeasedShard>();
  private jsm: JetStreamManager | undefined;
  private readonly metrics: TrainerDataMetrics | undefined;
  private readonly log: Logger;
  private readonly heartbeatMs: number;
  private readonly pollMs: number;
  private readonly endOfEpoch: 'all-acked' | 'queue-empty';
  private closed = false;

  constructor(private readonly options: ShardConsumerOptions) {
    this.q = resolveQueueOptions(options);
    this.js = jetstream(options.nc);
    this.metrics = options.registry ? trainerDataMetrics(options.registry) : undefined;
    this.log = options.logger ?? createLogger('shard-consumer', { stream: this.q.stream });
    this.heartbeatMs = options.heartbeatMs ?? Math.max(50, Math.floor(this.q.ackWaitMs / 3));
    this.pollMs = Math.max(2000, options.pollMs ?? 2000);
    this.endOfEpoch = options.endOfEpoch ?? 'all-acked';
  }

  /** Leases held by this trainer (not yet acked or nacked). */
  get leases(): LeasedShard[] {
    return [...this.held];
  }

  /**
   * The next descriptor, or null when the epoch is drained (nothing pending, and no lease held elsewhere that
   * could be redelivered) or the consumer was closed. Unparseable descriptors are terminated and skipped.
   */
  async next(): Promise<LeasedShard | null> {
    const consumer = (this.consumer ??= await this.js.consumers.get(this.q.stream, this.q.durable));
    while (!this.closed) {
      let msg: JsMsg | null;
      try {
        // The client fails a pull after two missed idle heartbeats. With the default heartbeat (half of `expires`)
        // that check races the server's expiry reply (seen with a 1 s pull on 2.9); a 500 ms heartbeat on a pull of
        // at least 2 s does not, and a miss that still happens is only an empty pull.
        msg = null;
        const batch = await consumer.fetch({ max_messages: 1, expires: this.pollMs, idle_heartbeat: 500 });
        for await (const m of batch) { msg = m; break; }
      } catch (e) {
        if (/heartbeats missed/i.test((e as Error).message)) {
          this.log.debug('pull request ended without heartbeats; pulling again', { error: (e as Error).message });
        } else {
          await this.waitOut(e as Error);
        }
        continue;
      }
      if (msg) {
        let descriptor: ShardDescriptor;
        try {
          descriptor = parseDescriptor(msg.data);
        } catch (e) {
          await rejectDescriptor(msg, e as Error, { jsm: async () => (this.jsm ??= await jetstreamManager(this.options.nc)), stream: this.q.stream, registry: this.options.registry, log: this.log });
          continue;
        }
        const lease = new LeasedShard(descriptor, msg, this.heartbeatMs, this.options.cursorFor?.(descriptor), (l, how) => {
          this.held.delete(l);
          this.metrics?.shardsHeld.set(this.held.size);
          (how === 'ack' ? this.metrics?.shardsAcked : this.metrics?.shardsNacked)?.inc();
        });
        this.held.add(lease);
        this.metrics?.shardsHeld.set(this.held.size);
        this.metrics?.shardsLeased.inc();
        if (lease.deliveryCount > 1) {
          this.metrics?.shardsRedelivered.inc();
          this.log.warn('descriptor redelivered', { id: descriptor.id, deliveryCount: lease.deliveryCount, cursor: lease.cursor });
        }
        if (lease.deliveryCount >= this.q.maxDeliver) {
          this.log.error('descriptor at its last delivery', { id: descriptor.id, maxDeliver: this.q.maxDeliver });
        }
        return lease;
      }
      let info;
      try {
        info = await consumer.info(false);
      } catch (e) {
        await this.waitOut(e as Error);
        continue;
      }
      if (info.num_pending === 0 && (this.endOfEpoch === 'queue-empty' || info.num_ack_pending <= this.held.size)) return null;
    }
    return null;
  }

  /** A pull or a consumer lookup that failed while the connection is still open (an outage): wait, then go on. */
  private async waitOut(e: Error): Promise<void> {
    if (this.options.nc.isClosed()) throw e;
    this.log.warn('shard queue not reachable; retrying', { error: e.message });
    await new Promise((r) => setTimeout(r, 500));
  }

  /** Stops pulling; hands back every lease still held so other trainers get them without waiting for ack_wait. */
  close(): void {
    this.closed = true;
    for (const l of [...this.held]) l.nak();
  }
}
