/**
 * The trainer's batch stream: leased shards in, batches out.
 *
 *   shard source (JetStream leases, or a local plan)
 *     -> readShard (tar / manifest / COCO, from each lease's cursor)
 *     -> worker pool (decode + BLIP-2 transform, off the training thread)
 *     -> bounded, order-preserving prefetch queue (at most `prefetch` samples read ahead)
 *     -> batches: pixels [B,3,S,S], token ids [B,T], sample ids, and per-shard cursors.
 *
 * Every batch says, for each shard it touched, the cursor after it (`cursors`) and which shards it finished
 * (`completed`). The training loop records the cursors in its checkpoint and acks the completed shards only after
 * that checkpoint commits. Samples keep shard order, so a cursor is simply the next ordinal to read.
 */
import type { Registry } from 'prom-client';
import { createLogger, type Logger } from '../common';
import type { ShardDescriptor } from './descriptor';
import { BadSampleError } from './errors';
import { trainerDataMetrics, type TrainerDataMetrics } from './metrics';
import { readShard } from './shard-reader';
import type { CaptionTokenizer } from './tokenizer';
import type { TransformOptions } from './transforms';
import { TransformPool, TransformWorkerError } from './workers/pool';

/** What the batch stream needs of a lease: its descriptor and where to start. `LeasedShard` is one. */
export interface ShardLease {
  readonly descriptor: ShardDescriptor;
  readonly cursor: number;
  /** Called when a shard cannot be read at all (its file is missing): hand it back. Optional. */
  nak?(delayMs?: number): void;
}

/** A source of leases; `ShardConsumer` is one, `localShardSource(planEpoch(...))` another. */
export interface ShardSource<L extends ShardLease = ShardLease> {
  next(): Promise<L | null>;
}

/** Leases from an in-memory plan (single process, tests, benchmarks): nothing to ack. */
export function localShardSource(
  descriptors: readonly ShardDescriptor[],
  cursorFor?: (d: ShardDescriptor) => number | undefined,
): ShardSource<ShardLease> {
  let i = 0;
  return {
    async next() {
      const d = descriptors[i++];
      return d ? { descriptor: d, cursor: cursorFor?.(d) ?? d.start } : null;
    },
  };
}

export interface ShardCursor<L extends ShardLease = ShardLease> {
  lease: L;
  descriptorId: string;
  /** Next ordinal to read after this batch. */
  nextOrdinal: number;
  /** The shard's range is finished. */
  done: boolean;
}

/**
 * One batch. The last batch of a stream may be short, and may even be empty (`batchSize` 0) when it only reports
 * shards completed by samples that were skipped: skip the step, but still ack its `completed` after the next commit.
 */
export interface Batch<L extends ShardLease = ShardLease> {
  /** Stable ids `<dataset>/<shard>/<key>`, one per row: what the sample ledger records. */
  sampleIds: string[];
  /** Cleaned captions (after `pre_caption`, and the left/right swap of flipped images when enabled). */
  captions: string[];
  /** [B, 3, S, S], CLIP-normalised. */
  pixelValues: Float32Array;
  /** [B, T] */
  inputIds: Int32Array;
  /** [B, T] */
  attentionMask: Int32Array;
  batchSize: number;
  seqLength: number;
  imageSize: number;
  /** Epoch of every sample's descriptor (a batch never mixes epochs when the source serves one epoch). */
  epochs: number[];
  /** Position after this batch in every shard it touched. */
  cursors: ShardCursor<L>[];
  /** Shards whose whole range is consumed by the end of this batch: ack them once it is checkpointed. */
  completed: L[];
}

export interface BatchStreamOptions<L extends ShardLease> {
  source: ShardSource<L>;
  /** Folder the descriptors' paths are relative to (the index folder). */
  dataRoot: string;
  tokenizer: CaptionTokenizer;
  /** Samples per batch. Required. */
  batchSize: number;
  /** Image transform; default train mode at 224. */
  transform?: TransformOptions;
  /** Decode worker threads. Default 1; 0 decodes on the calling thread. */
  workers?: number;
  /** Samples read ahead of the consumer (decoding or decoded). Default 2 × batchSize. */
  prefetch?: number;
  /**
   * When a train-mode flip mirrors an image, swap the words "left" and "right" in its caption, so that captions
   * about relative position stay true. Default true. (LAVIS flips without touching the caption.)
   */
  swapLeftRightOnFlip?: boolean;
  /** Raw captions longer than this are skipped (`caption_too_long`). Default 2,000 characters. */
  maxCaptionChars?: number;
  registry?: Registry;
  logger?: Logger;
}

type Entry<L> =
  | { kind: 'sample'; lease: L; ordinal: number; sampleId: string; key: string; caption: string; result: Promise<{ pixels: Float32Array; flipped: boolean; seconds: number }> }
  | { kind: 'skip'; lease: L; ordinal: number; error: BadSampleError }
  | { kind: 'end'; lease: L };

export interface BatchStream<L extends ShardLease> extends AsyncIterableIterator<Batch<L>> {
  /**
   * Stops reading, terminates the workers. Leases are the caller's to ack or nak: after a rollback or at
   * shutdown, `ShardConsumer.close()` naks every lease still held (their cursors come from the checkpoint).
   */
  close(): Promise<void>;
}

export function swapLeftRight(caption: string): string {
  return caption.replace(/\b(left|right)\b/g, (w) => (w === 'left' ? 'right' : 'left'));
}

/**
 * The batch stream over `options.source`:
 *  1. check the options;
 *  2. start the producer: leased shards are read from their cursors and their images handed to the worker pool,
 *     in order, into the bounded prefetch queue;
 *  3. per `next()`: take a batch's worth of samples from the queue (skips and shard ends recorded as cursors);
 *  4. assemble them into one batch (pixels, token ids, cursors, completed shards).
 */
export function createBatchStream<L extends ShardLease>(options: BatchStreamOptions<L>): BatchStream<L> {
  // 1. Options.
  const batchSize = options.batchSize;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  const prefetch = options.prefetch ?? 2 * batchSize;
  if (!Number.isInteger(prefetch) || prefetch < 1) throw new RangeError(`prefetch must be a positive integer, got ${prefetch}`);
  const metrics: TrainerDataMetrics | undefined = options.registry ? trainerDataMetrics(options.registry) : undefined;
  const log = options.logger ?? createLogger('batch-stream');
  const settings: BatchSettings = {
    batchSize,
    imageSize: options.transform?.imageSize ?? 224,
    swap: options.swapLeftRightOnFlip ?? true,
    tokenizer: options.tokenizer,
    metrics,
    skip: (e: BadSampleError) => {
      metrics?.samplesSkipped.inc({ reason: e.reason }, e.samples);
      if (metrics) metrics.skippedByReason[e.reason] = (metrics.skippedByReason[e.reason] ?? 0) + e.samples;
      log.warn('sample skipped', { reason: e.reason, shard: e.shard, key: e.key, error: e.message });
    },
  };
  const pool = new TransformPool({ workers: options.workers ?? 1, transform: options.transform });

  // 2. The producer.
  const queue = new PrefetchQueue<Entry<L>>(prefetch, (n) => metrics?.prefetchSamples.set(n));
  void produce(queue, options, pool, log);

  // 3.–4. One batch per call; undefined at the end of the stream with nothing left to report.
  const nextBatch = async (): Promise<Batch<L> | undefined> => {
    const taken = await takeBatch(queue, settings);
    if (queue.producerError) throw queue.producerError;
    if (taken.rows.length === 0 && taken.completed.length === 0 && taken.cursors.size === 0) return undefined;
    return assembleBatch(taken, settings);
  };

  const close = async () => {
    queue.close();
    await pool.close();
  };

  const stream: BatchStream<L> = {
    async next(): Promise<IteratorResult<Batch<L>>> {
      const t0 = performance.now();
      let b: Batch<L> | undefined;
      try {
        b = queue.closed ? undefined : await nextBatch();
      } catch (e) {
        await close();
        throw e;
      }
      metrics?.batchWaitSeconds.observe((performance.now() - t0) / 1000);
      if (!b) { await close(); return { done: true, value: undefined }; }
      return { done: false, value: b };
    },
    async return(): Promise<IteratorResult<Batch<L>>> {
      await close();
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() { return stream; },
    close,
  };
  return stream;
}

/** What taking and assembling a batch needs. */
interface BatchSettings {
  batchSize: number;
  imageSize: number;
  /** Swap left/right in the captions of flipped images. */
  swap: boolean;
  tokenizer: CaptionTokenizer;
  metrics?: TrainerDataMetrics;
  /** Counts and logs a skipped sample. */
  skip(e: BadSampleError): void;
}

/** The bounded, order-preserving queue between the producer (shard reader) and the batches (consumer). */
class PrefetchQueue<E> {
  private readonly items: E[] = [];
  producerDone = false;
  producerError: unknown;
  closed = false;
  private wakeConsumer?: () => void;
  private wakeProducer?: () => void;

  constructor(private readonly capacity: number, private readonly onDepth: (n: number) => void) {}

  get length(): number {
    return this.items.length;
  }

  /** The entry at the head, without taking it. */
  peek(): E | undefined {
    return this.items[0];
  }

  /** Waits while the queue is full (unless closed), then appends. */
  async push(e: E): Promise<void> {
    while (this.items.length >= this.capacity && !this.closed) await new Promise<void>((r) => (this.wakeProducer = r));
    this.items.push(e);
    this.onDepth(this.items.length);
    this.notifyConsumer();
  }

  /** The next entry; undefined once the producer is done (or the queue closed) and nothing is left. */
  async take(): Promise<E | undefined> {
    while (this.items.length === 0) {
      if (this.producerDone || this.closed) return undefined;
      await new Promise<void>((r) => (this.wakeConsumer = r));
    }
    const e = this.items.shift()!;
    this.onDepth(this.items.length);
    this.notifyProducer();
    return e;
  }

  /** The producer has stopped (with `error` when it failed). */
  finish(error?: unknown): void {
    if (error !== undefined) this.producerError = error;
    this.producerDone = true;
    this.notifyConsumer();
  }

  close(): void {
    this.closed = true;
    this.notifyProducer();
    this.notifyConsumer();
  }

  private notifyConsumer(): void {
    const w = this.wakeConsumer;
    this.wakeConsumer = undefined;
    w?.();
  }

  private notifyProducer(): void {
    const w = this.wakeProducer;
    this.wakeProducer = undefined;
    w?.();
  }
}

/** Step 2: leases from the source, their samples read from the cursor and sent to the pool, in order, into `queue`. */
async function produce<L extends ShardLease>(
  queue: PrefetchQueue<Entry<L>>, options: BatchStreamOptions<L>, pool: TransformPool, log: Logger,
): Promise<void> {
  let failure: unknown;
  try {
    while (!queue.closed) {
      const lease = await options.source.next();
      if (!lease) break;
      const d = lease.descriptor;
      try {
        for await (const item of readShard(d, { dataRoot: options.dataRoot, fromOrdinal: lease.cursor, maxCaptionChars: options.maxCaptionChars })) {
          if (queue.closed) return;
          if (item.kind === 'skip') { await queue.push({ kind: 'skip', lease, ordinal: item.ordinal, error: item.error }); continue; }
          const result = pool.run(item.image, [d.seed, d.epoch, item.sampleId]);
          result.catch(() => undefined); // handled in order by the consumer
          await queue.push({ kind: 'sample', lease, ordinal: item.ordinal, sampleId: item.sampleId, key: item.key, caption: item.caption, result });
        }
      } catch (e) {
        // The shard cannot be read at all (missing file): hand it back and go on with the next one.
        log.error('shard unreadable, handed back', { id: d.id, error: (e as Error).message });
        lease.nak?.(5000);
        continue;
      }
      await queue.push({ kind: 'end', lease });
    }
  } catch (e) {
    failure = e;
  } finally {
    queue.finish(failure);
  }
}

interface TakenBatch<L extends ShardLease> {
  rows: Array<{ sampleId: string; caption: string; pixels: Float32Array; epoch: number }>;
  cursors: Map<L, ShardCursor<L>>;
  completed: L[];
}

/** Step 3: up to `batchSize` decoded samples, then the shard ends and skips queued right behind them. */
async function takeBatch<L extends ShardLease>(queue: PrefetchQueue<Entry<L>>, s: BatchSettings): Promise<TakenBatch<L>> {
  const taken: TakenBatch<L> = { rows: [], cursors: new Map(), completed: [] };
  const { rows, cursors, completed } = taken;
  const touch = (lease: L, nextOrdinal: number, done = false) => {
    const c = cursors.get(lease) ?? { lease, descriptorId: lease.descriptor.id, nextOrdinal, done: false };
    c.nextOrdinal = Math.max(c.nextOrdinal, nextOrdinal);
    c.done ||= done;
    cursors.set(lease, c);
  };
  const consume = async (e: Entry<L>) => {
    if (e.kind === 'end') { touch(e.lease, e.lease.descriptor.end, true); completed.push(e.lease); return; }
    touch(e.lease, e.ordinal + 1);
    if (e.kind === 'skip') { s.skip(e.error); return; }
    try {
      const r = await e.result;
      s.metrics?.decodeSeconds.observe(r.seconds);
      const caption = s.swap && r.flipped ? swapLeftRight(e.caption) : e.caption;
      rows.push({ sampleId: e.sampleId, caption, pixels: r.pixels, epoch: e.lease.descriptor.epoch });
    } catch (err) {
      if (err instanceof TransformWorkerError) throw err;
      s.skip(new BadSampleError('corrupt_image', e.lease.descriptor.shard, e.key, (err as Error).message));
    }
  };
  while (rows.length < s.batchSize) {
    const e = await queue.take();
    if (!e) break;
    await consume(e);
  }
  // Report shard ends (and skips) that are already queued behind the batch's last sample.
  while (queue.length && queue.peek()!.kind !== 'sample') await consume((await queue.take())!);
  return taken;
}

/** Step 4: pixels into one [B, 3, S, S] array, captions through the tokenizer. */
function assembleBatch<L extends ShardLease>(taken: TakenBatch<L>, s: BatchSettings): Batch<L> {
  const { rows, cursors, completed } = taken;
  const B = rows.length;
  const plane = 3 * s.imageSize * s.imageSize;
  const pixelValues = new Float32Array(B * plane);
  rows.forEach((r, b) => pixelValues.set(r.pixels, b * plane));
  const tok = s.tokenizer.encodeBatch(rows.map((r) => r.caption));
  s.metrics?.samples.inc(B);
  s.metrics?.batches.inc();
  return {
    sampleIds: rows.map((r) => r.sampleId),
    captions: rows.map((r) => r.caption),
    pixelValues,
    inputIds: tok.inputIds,
    attentionMask: tok.attentionMask,
    batchSize: B,
    seqLength: tok.seqLength,
    imageSize: s.imageSize,
    epochs: rows.map((r) => r.epoch),
    cursors: [...cursors.values()],
    completed,
  };
}
