/**
 * The collective group of one generation: its options, the gradient buckets (tensor fusion, reduced in bucket order),
 * and all-reduce, all-gather and broadcast over the ring of trainer/collective/ring.ts.
 */
import { UsageError } from '../../common';
import { CollectiveError } from './errors';
import { GrpcTransport, type CollectiveTlsOptions } from './grpc-transport';
import { Ring } from './ring';
import type { PeerAddress, RingView, Transport } from './transport';

const MiB = 1024 * 1024;

export interface CollectiveGroupOptions {
  /** The job id; every frame carries it and frames of another job are refused. Required. */
  jobId: string;
  /** The job's shared secret (from the job config); peers without it get UNAUTHENTICATED. Required. */
  token: string;
  /** Address this rank's gRPC server listens on. Default host "0.0.0.0", port 0 (an ephemeral port; see `address`). */
  listen?: { host?: string; port?: number };
  /** Mutual TLS: this rank's certificate and key, and the CA that signs every rank's. Default: plaintext. */
  tls?: CollectiveTlsOptions;
  /** A collective fails when a neighbour sends nothing for this long; also bounds `connect`. Default 30000. */
  timeoutMs?: number;
  /** Gradients are fused into buckets of at most this many bytes and reduced in bucket order. Default 64 MiB. */
  bucketCapBytes?: number;
  /** Largest tensor payload of one gRPC message. Default 1 MiB. */
  chunkBytes?: number;
  /** Send fp16 on the wire in all-reduce (sums stay fp32; results are fp16-rounded). Default false. */
  fp16Wire?: boolean;
  /** Largest gRPC message sent or accepted, both directions. Default chunkBytes + 64 KiB. */
  maxMessageBytes?: number;
  /** HTTP/2 flow-control window for received data. Default 32 MiB. */
  flowControlWindowBytes?: number;
  /**
   * Parallel gRPC streams per neighbour link, frames spread round-robin (all ranks must agree). Default 1; more
   * keeps more messages queued below JavaScript, which showed no clear gain on the 2-vCPU test machine.
   */
  streamsPerLink?: number;
  /**
   * Write and read data frames directly on the HTTP/2 streams beneath grpc-js (the same gRPC bytes on the wire,
   * without grpc-js's copy and allocation per message); grpc-js's public path when false or when its internals
   * are not where expected. Default true.
   */
  directFraming?: boolean;
  /** Connect at once (otherwise call `connect()`): all four of generation, rank, worldSize and peers. */
  generation?: number;
  rank?: number;
  worldSize?: number;
  peers?: PeerAddress[];
  /** A different transport (tests); default the gRPC transport built from the options above. */
  transport?: Transport;
}

export interface ResolvedCollectiveGroupOptions {
  jobId: string;
  token: string;
  listen: { host: string; port: number };
  tls?: CollectiveTlsOptions;
  timeoutMs: number;
  bucketCapBytes: number;
  chunkBytes: number;
  fp16Wire: boolean;
  maxMessageBytes: number;
  flowControlWindowBytes: number;
  streamsPerLink: number;
  directFraming: boolean;
}

function positiveInt(name: string, value: unknown, min = 1): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`collective option ${name} must be an integer ≥ ${min}; got ${JSON.stringify(value)}`);
  }
  return value;
}

export function resolveCollectiveGroupOptions(o: CollectiveGroupOptions): ResolvedCollectiveGroupOptions {
  if (typeof o.jobId !== 'string' || o.jobId.length === 0 || o.jobId.length > 200) {
    throw new UsageError(`collective option jobId must be a non-empty string of at most 200 characters; got ${JSON.stringify(o.jobId)}`);
  }
  if (typeof o.token !== 'string' || o.token.length === 0) throw new UsageError('collective option token must be a non-empty string');
  const chunkBytes = positiveInt('chunkBytes', o.chunkBytes ?? MiB, 64);
  if (chunkBytes % 4 !== 0) throw new UsageError(`collective option chunkBytes must be a multiple of 4; got ${chunkBytes}`);
  const maxMessageBytes = positiveInt('maxMessageBytes', o.maxMessageBytes ?? chunkBytes + 64 * 1024);
  if (maxMessageBytes < chunkBytes + 4096) {
    throw new UsageError(`collective option maxMessageBytes (${maxMessageBytes}) must be at least chunkBytes + 4096 (${chunkBytes + 4096}) to hold a frame`);
  }
  const bucketCapBytes = positiveInt('bucketCapBytes', o.bucketCapBytes ?? 64 * MiB, 4);
  return {
    jobId: o.jobId,
    token: o.token,
    listen: { host: o.listen?.host ?? '0.0.0.0', port: o.listen?.port === undefined ? 0 : positiveInt('listen.port', o.listen.port, 0) },
    ...(o.tls ? { tls: o.tls } : {}),
    timeoutMs: positiveInt('timeoutMs', o.timeoutMs ?? 30_000),
    bucketCapBytes,
    chunkBytes,
    fp16Wire: o.fp16Wire ?? false,
    maxMessageBytes,
    flowControlWindowBytes: positiveInt('flowControlWindowBytes', o.flowControlWindowBytes ?? 32 * MiB, 65_535),
    streamsPerLink: positiveInt('streamsPerLink', o.streamsPerLink ?? 1),
    directFraming: o.directFraming ?? true,
  };
}

export interface ConnectOptions {
  generation: number;
  rank: number;
  worldSize: number;
  /** Addresses of the ranks of this generation (at least this rank's ring predecessor). */
  peers: PeerAddress[];
}

/** Cumulative counters of completed collectives of one kind (for metrics such as bus bandwidth). */
export interface CollectiveOpStats {
  calls: number;
  /** fp32 bytes: all-reduce, the tensors; all-gather, all blocks together; broadcast, the buffer. */
  bytes: number;
  seconds: number;
}

export interface CollectiveStats {
  allReduce: CollectiveOpStats;
  allGather: CollectiveOpStats;
  broadcast: CollectiveOpStats;
  barrier: CollectiveOpStats;
}

export interface AllReduceOptions {
  /** 'sum' (default) or 'mean'. With `weight`, 'mean' is Σ weight_r·x_r / Σ weight_r. */
  op?: 'sum' | 'mean';
  /** This rank's weight for a weighted mean, e.g. its sample count in the step (finite, ≥ 0). */
  weight?: number;
  /** Overrides the group's fp16Wire for this call. */
  fp16Wire?: boolean;
}

/**
 * A rank's membership in the job's collective ring. Ranks must call collectives in the same order with the same
 * sizes, one at a time (await each).
 */
export class CollectiveGroup {
  private readonly ring: Ring;
  private viewState: RingView | null = null;
  private staging = new Float32Array(0);
  private closed = false;
  private readonly counters: CollectiveStats = {
    allReduce: { calls: 0, bytes: 0, seconds: 0 },
    allGather: { calls: 0, bytes: 0, seconds: 0 },
    broadcast: { calls: 0, bytes: 0, seconds: 0 },
    barrier: { calls: 0, bytes: 0, seconds: 0 },
  };

  /**
   * Counters of completed collectives since the group was created (busbw of all-reduce =
   * bytes/seconds × 2(N-1)/N). A copy.
   */
  stats(): CollectiveStats {
    return structuredClone(this.counters);
  }

  /**
   * How many streams of the current generation send and receive data frames directly on HTTP/2 (see
   * `directFraming`); null for a transport other than the gRPC one.
   */
  directFramingStreams(): { send: number; receive: number } | null {
    return this.transport instanceof GrpcTransport ? this.transport.directFramingStreams : null;
  }

  private count(kind: keyof CollectiveStats, bytes: number, startNs: bigint): void {
    const c = this.counters[kind];
    c.calls++;
    c.bytes += bytes;
    c.seconds += Number(process.hrtime.bigint() - startNs) / 1e9;
  }

  private constructor(
    readonly options: ResolvedCollectiveGroupOptions,
    private readonly transport: Transport,
    /** The address this rank listens on (announce it at rendezvous). */
    readonly address: { host: string; port: number },
  ) {
    this.ring = new Ring(transport, { jobId: options.jobId, timeoutMs: options.timeoutMs, chunkBytes: options.chunkBytes });
  }

  /** Starts the server (see `createCollectiveGroup`). */
  static async create(o: CollectiveGroupOptions): Promise<CollectiveGroup> {
    const options = resolveCollectiveGroupOptions(o);
    const transport =
      o.transport ??
      new GrpcTransport({
        jobId: options.jobId,
        token: options.token,
        listen: options.listen,
        ...(options.tls ? { tls: options.tls } : {}),
        timeoutMs: options.timeoutMs,
        maxMessageBytes: options.maxMessageBytes,
        flowControlWindowBytes: options.flowControlWindowBytes,
        streamsPerLink: options.streamsPerLink,
        directFraming: options.directFraming,
      });
    const address = await transport.listen();
    const group = new CollectiveGroup(options, transport, address);
    if (o.generation !== undefined || o.rank !== undefined || o.worldSize !== undefined || o.peers !== undefined) {
      try {
        await group.connect({ generation: o.generation!, rank: o.rank!, worldSize: o.worldSize!, peers: o.peers! });
      } catch (e) {
        await group.close();
        throw e;
      }
    }
    return group;
  }

  get rank(): number {
    return this.viewState?.rank ?? -1;
  }
  get worldSize(): number {
    return this.viewState?.worldSize ?? 0;
  }
  get generation(): number {
    return this.viewState?.generation ?? -1;
  }

  /**
   * Joins generation `generation` as `rank` of `worldSize`: opens the stream to the ring predecessor and waits for
   * the successor's. Call again with a higher generation after a membership change (links of the old generation
   * are closed, and peers still on it are refused).
   */
  async connect(c: ConnectOptions): Promise<void> {
    if (this.closed) throw new UsageError('collective group is closed');
    const generation = positiveInt('generation', c.generation, 0);
    const worldSize = positiveInt('worldSize', c.worldSize, 1);
    const rank = positiveInt('rank', c.rank, 0);
    if (rank >= worldSize) throw new UsageError(`collective rank ${rank} is not below worldSize ${worldSize}`);
    if (!Array.isArray(c.peers)) throw new UsageError('collective connect: peers must be an array of {rank, host, port}');
    for (const p of c.peers) {
      if (!p || !Number.isSafeInteger(p.rank) || p.rank < 0 || p.rank >= worldSize || typeof p.host !== 'string' || !Number.isSafeInteger(p.port) || p.port <= 0 || p.port > 65535) {
        throw new UsageError(`collective connect: bad peer ${JSON.stringify(p)} (want {rank: 0..${worldSize - 1}, host, port: 1..65535})`);
      }
    }
    const prev = (rank - 1 + worldSize) % worldSize;
    if (worldSize > 1 && !c.peers.some((p) => p.rank === prev)) {
      throw new UsageError(`collective connect: peers lack rank ${prev}, the ring predecessor of rank ${rank}`);
    }
    const view: RingView = { generation, rank, worldSize, peers: c.peers.map((p) => ({ ...p })) };
    this.ring.reset(view);
    this.viewState = view;
    try {
      await this.transport.connect(view);
    } catch (e) {
      const err =
        e instanceof CollectiveError ? e : new CollectiveError(`connect failed: ${(e as Error).message}`, 'refused', 'connect', -1, generation, { cause: e });
      this.ring.fail(err, false);
      throw err;
    }
  }

  /**
   * Sums (or averages) `tensors` across ranks, in place. Tensors are fused into buckets of `bucketCapBytes` and
   * reduced in order; every rank must pass tensors of the same lengths in the same order.
   */
  async allReduce(tensors: Float32Array[], opts: AllReduceOptions = {}): Promise<void> {
    if (!Array.isArray(tensors) || tensors.some((t) => !(t instanceof Float32Array))) {
      throw new UsageError('allReduce: tensors must be an array of Float32Array');
    }
    const start = process.hrtime.bigint();
    await this.allReduceBuckets(tensors, opts);
    this.count('allReduce', tensors.reduce((n, t) => n + t.byteLength, 0), start);
  }

  private async allReduceBuckets(tensors: Float32Array[], opts: AllReduceOptions): Promise<void> {
    const op = opts.op ?? 'sum';
    if (op !== 'sum' && op !== 'mean') throw new UsageError(`allReduce: op must be 'sum' or 'mean'; got ${JSON.stringify(op)}`);
    if (opts.weight !== undefined && (op !== 'mean' || !Number.isFinite(opts.weight) || opts.weight < 0)) {
      throw new UsageError(`allReduce: weight must be a finite number ≥ 0 and needs op 'mean'; got ${JSON.stringify(opts.weight)} with op '${op}'`);
    }
    const fp16 = opts.fp16Wire ?? this.options.fp16Wire;
    let pre = 1;
    let post = 1;
    if (opts.weight !== undefined) {
      const total = new Float32Array([opts.weight]);
      await this.ring.allReduceSum(total, false);
      if (!(total[0]! > 0)) throw new UsageError(`allReduce: the weights of all ranks sum to ${total[0]}; a weighted mean needs a positive total`);
      pre = opts.weight;
      post = 1 / total[0]!;
    } else if (op === 'mean') {
      post = 1 / Math.max(1, this.worldSize);
    }

    const cap = Math.max(1, Math.floor(this.options.bucketCapBytes / 4));
    const buckets = planBuckets(tensors.map((t) => t.length), cap);
    if (buckets.length === 0) {
      // Still one (empty) collective, so that ranks stay in step and a rank with data is caught as a mismatch.
      await this.ring.allReduceSum(new Float32Array(0), fp16);
      return;
    }
    const scale = (a: Float32Array, f: number) => {
      if (f !== 1) for (let i = 0; i < a.length; i++) a[i]! *= f;
    };
    for (const bucket of buckets) {
      if (bucket.length === 1) {
        // One piece: reduce it where it lies.
        const p = bucket[0]!;
        const slice = tensors[p.tensor]!.subarray(p.from, p.from + p.count);
        scale(slice, pre);
        await this.ring.allReduceSum(slice, fp16);
        scale(slice, post);
        continue;
      }
      const elements = bucket.reduce((n, p) => n + p.count, 0);
      if (this.staging.length < elements) this.staging = new Float32Array(elements);
      const s = this.staging.subarray(0, elements);
      let at = 0;
      for (const p of bucket) {
        s.set(tensors[p.tensor]!.subarray(p.from, p.from + p.count), at);
        at += p.count;
      }
      scale(s, pre);
      await this.ring.allReduceSum(s, fp16);
      scale(s, post);
      at = 0;
      for (const p of bucket) {
        tensors[p.tensor]!.set(s.subarray(at, at + p.count), p.from);
        at += p.count;
      }
    }
  }

  /**
   * Every rank's `block` in rank order; blocks may differ in length (a rank may have zero rows). With
   * `rowWidth`, each block must be whole rows of that width.
   */
  async allGather(block: Float32Array, rowWidth = 1): Promise<Float32Array[]> {
    if (!(block instanceof Float32Array)) throw new UsageError('allGather: block must be a Float32Array');
    positiveInt('rowWidth', rowWidth);
    if (block.length % rowWidth !== 0) {
      throw new UsageError(`allGather: block of ${block.length} elements is not whole rows of width ${rowWidth}`);
    }
    const start = process.hrtime.bigint();
    const blocks = await this.ring.allGather(block);
    this.count('allGather', blocks.reduce((n, b) => n + b.byteLength, 0), start);
    blocks.forEach((b, r) => {
      if (b.length % rowWidth !== 0) {
        throw new CollectiveError(`allGather: rank ${r} sent ${b.length} elements, not whole rows of width ${rowWidth}`, 'mismatch', 'allGather', r, this.generation);
      }
    });
    return blocks;
  }

  /** Overwrites `data` on every rank with root's `data` (same length everywhere). */
  async broadcast(data: Float32Array, root: number): Promise<void> {
    if (!(data instanceof Float32Array)) throw new UsageError('broadcast: data must be a Float32Array');
    if (!Number.isSafeInteger(root) || root < 0 || root >= this.worldSize) {
      throw new UsageError(`broadcast: root must be a rank in 0..${this.worldSize - 1}; got ${root}`);
    }
    const start = process.hrtime.bigint();
    await this.ring.broadcast(data, root);
    this.count('broadcast', data.byteLength, start);
  }

  /** Resolves once every rank of the generation has entered it. */
  async barrier(): Promise<void> {
    const start = process.hrtime.bigint();
    await this.ring.barrier();
    this.count('barrier', 0, start);
  }

  /**
   * Closes links and the server (waiting briefly so that neighbours receive our last frames); pending collectives
   * fail with CollectiveError('closed').
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // After a failure only the ABORT frames need to get out; otherwise give neighbours time to take our last
    // frames and BYE.
    const graceMs = this.ring.failed ? 250 : Math.min(this.options.timeoutMs, 2000);
    this.ring.fail(new CollectiveError('collective group closed', 'closed', 'close', -1, this.generation), false);
    await this.transport.close(graceMs);
  }
}

/** A contiguous run of one tensor's elements inside a bucket. */
export interface BucketPiece {
  tensor: number;
  from: number;
  count: number;
}

/**
 * Fuses tensors (by length, in order) into buckets of at most `capElements`, as DDP and Horovod do. A tensor that
 * does not fit in the current bucket starts a new one; a tensor of at least `capElements` is cut into whole-cap
 * pieces that are buckets of their own (reduced in place, no staging copy), its remainder packed like a small
 * tensor. Empty tensors take no room. The plan depends only on the lengths, so every rank makes the same one.
 */
export function planBuckets(lengths: number[], capElements: number): BucketPiece[][] {
  const buckets: BucketPiece[][] = [];
  let current: BucketPiece[] = [];
  let filled = 0;
  const close = () => {
    if (current.length) buckets.push(current);
    current = [];
    filled = 0;
  };
  lengths.forEach((length, tensor) => {
    let from = 0;
    while (length - from >= capElements) {
      close();
      buckets.push([{ tensor, from, count: capElements }]);
      from += capElements;
    }
    const rest = length - from;
    if (rest === 0) return;
    if (filled + rest > capElements) close();
    current.push({ tensor, from, count: rest });
    filled += rest;
  });
  close();
  return buckets;
}

/**
 * Starts this rank's collective server (listening before peers are known) and, when generation/rank/worldSize/
 * peers are given, connects at once.
 */
export function createCollectiveGroup(options: CollectiveGroupOptions): Promise<CollectiveGroup> {
  return CollectiveGroup.create(options);
}
