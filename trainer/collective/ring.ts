/**
 * Ring collectives over a `Transport`: all-reduce (reduce-scatter then all-gather, N-1 steps each), all-gather of
 * variable-sized blocks, broadcast and barrier. Event-driven: every received chunk is reduced (or copied) and
 * passed on at once, so sending, receiving and adding overlap chunk by chunk.
 *
 * Ring all-reduce on rank r of N, buffer split into N segments (the first L mod N one element longer):
 *   1. Reduce-scatter step k = 0..N-2: send segment (r-k) mod N to rank r+1; receive segment (r-k-1) from r-1,
 *      add this rank's copy and (for k < N-2) send the sum on as step k+1. After step N-2, segment (r+1) mod N
 *      holds the full sum on rank r.
 *   2. All-gather step k = 0..N-2 (wire step N-1+k): send segment (r+1-k); receive segment (r-k), store it, and
 *      (for k < N-2) forward the same buffer as step k+1.
 * Every segment is sent as chunks of at most `chunkBytes` (at least one frame, possibly empty, so that every rank
 * counts the same frames). Frames are self-describing (step, segment, offset), so their order does not matter.
 */
import { CollectiveError, type CollectiveFailure } from './errors';
import { addHalfInPlace, addHalfInPlaceKeep, floatToHalf, halfToFloatBits } from './fp16';
import { decodeFrame, DType, FrameEncoder, FrameKind, OpKind, opKindName, patchForward, type DecodedFrame, type FrameHeader } from './frame';
import type { LinkSide, RingView, Transport } from './transport';

export interface RingOptions {
  jobId: string;
  timeoutMs: number;
  /** Largest payload of one data frame, in bytes (fp32 elements × 4). */
  chunkBytes: number;
}

interface ActiveOp {
  seq: number;
  kind: OpKind;
  name: string;
  onData(f: DecodedFrame): void;
  fail(e: CollectiveError): void;
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

export class Ring {
  private view: RingView | null = null;
  private seq = 0;
  private failure: CollectiveError | null = null;
  private op: ActiveOp | null = null;
  private early: DecodedFrame[] = [];
  /** Neighbours that said BYE in this generation. */
  private readonly departed = new Set<number>();
  private lastProgressMs = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly encoder: FrameEncoder;
  private readonly chunkElements: number;
  private readonly pool = new Map<number, Buffer[]>();
  private scratch = new Float32Array(0);
  private scratch16 = new Uint16Array(0);

  constructor(
    private readonly transport: Transport,
    private readonly options: RingOptions,
  ) {
    this.encoder = new FrameEncoder(options.jobId);
    this.chunkElements = Math.max(1, Math.floor(options.chunkBytes / 4));
    transport.setEvents({
      onFrame: (buf, side) => this.onFrame(buf, side),
      onPeerLeft: (side, peerRank) => {
        this.departed.add(peerRank);
        // Frames from the previous rank precede its BYE: an operation still waiting for it cannot finish.
        if (side === 'prev' && this.op) {
          this.fail(this.error('closed', `rank ${peerRank} left the generation before finishing ${this.op.name}`, peerRank), false);
        }
      },
      onLinkLost: (side, peerRank, reason) => {
        const v = this.view;
        const name = this.op?.name ?? (v ? `idle after op #${this.seq}` : 'connect');
        this.fail(
          new CollectiveError(
            `rank ${peerRank} lost during ${name} (generation ${v?.generation}, seen from rank ${v?.rank}, ${side} link): ${reason}`,
            'peer-lost', name, peerRank, v?.generation ?? -1,
          ),
        );
      },
    });
  }

  get rank(): number {
    return this.view?.rank ?? -1;
  }

  get failed(): CollectiveError | null {
    return this.failure;
  }

  /** Starts a generation: forgets any failure and operation of the previous one. */
  reset(view: RingView): void {
    if (this.op) {
      this.op.fail(new CollectiveError(`${this.op.name} interrupted by a new generation ${view.generation}`, 'closed', this.op.name, -1, view.generation));
    }
    this.clearOp();
    this.view = view;
    this.seq = 0;
    this.failure = null;
    this.early = [];
    this.departed.clear();
  }

  /** Fails the current and every later operation (until reset), and tells both neighbours. */
  fail(err: CollectiveError, tellPeers = true): void {
    if (this.failure) return;
    this.failure = err;
    const v = this.view;
    if (tellPeers && v && v.worldSize > 1) {
      const abort = this.encoder.abort(v.generation, this.op?.seq ?? this.seq, v.rank, err.missingRank, err.message);
      this.transport.sendNext(abort);
      this.transport.sendPrev(abort);
    }
    const op = this.op;
    this.clearOp();
    op?.fail(err);
  }

  private clearOp(): void {
    this.op = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private error(failure: CollectiveFailure, message: string, missingRank = -1): CollectiveError {
    const v = this.view;
    const name = this.op?.name ?? `op #${this.seq}`;
    return new CollectiveError(`${name} on rank ${v?.rank} (generation ${v?.generation}): ${message}`, failure, name, missingRank, v?.generation ?? -1);
  }

  private onFrame(buf: Buffer, side: LinkSide): void {
    const v = this.view;
    if (!v || this.failure) return;
    const peer = side === 'prev' ? mod(v.rank - 1, v.worldSize) : (v.rank + 1) % v.worldSize;
    let f: DecodedFrame;
    try {
      f = decodeFrame(buf);
    } catch (e) {
      this.fail(this.error('refused', `malformed frame from rank ${peer}: ${(e as Error).message}`, peer));
      return;
    }
    if (f.jobId !== this.options.jobId) {
      this.fail(this.error('refused', `rank ${peer} sent a frame of job "${f.jobId}"`, peer));
      return;
    }
    if (f.generation !== v.generation) {
      this.fail(this.error('refused', `rank ${peer} sent a frame of generation ${f.generation}; this is generation ${v.generation}`, peer));
      return;
    }
    if (f.kind === FrameKind.ABORT) {
      const missing = f.missingRank;
      const name = this.op?.name ?? `op #${this.seq}`;
      this.fail(
        new CollectiveError(
          `${name} aborted on rank ${v.rank} (generation ${v.generation}) because rank ${f.srcRank} failed: ${f.message}`,
          'aborted', name, missing, v.generation,
        ),
      );
      return;
    }
    if (side !== 'prev' || f.kind !== FrameKind.DATA) {
      this.fail(this.error('refused', `unexpected frame kind ${f.kind} from rank ${peer}`, peer));
      return;
    }
    const op = this.op;
    if (op && f.opSeq === op.seq) {
      this.lastProgressMs = Date.now();
      if (f.op !== op.kind) {
        this.fail(this.error('mismatch', `rank ${peer} is in ${opKindName[f.op] ?? f.op}#${f.opSeq}, this rank in ${op.name}: ranks must call collectives in the same order`, peer));
        return;
      }
      try {
        op.onData(f);
      } catch (e) {
        this.fail(e instanceof CollectiveError ? e : this.error('mismatch', (e as Error).message, peer));
      }
    } else if (f.opSeq > (op ? op.seq : this.seq)) {
      this.early.push(f);
    } else {
      this.fail(this.error('refused', `rank ${peer} sent a frame of finished op #${f.opSeq}`, peer));
    }
  }

  /** Runs one operation: registers it, replays frames that arrived early, starts `start`, arms the timeout. */
  private run<T>(
    kind: OpKind,
    setup: (ctx: { done: (value: T) => void; progress: () => void }) => { onData: (f: DecodedFrame) => void; start: () => Promise<void> },
  ): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const v = this.view;
    if (!v) return Promise.reject(new CollectiveError('not connected: call connect() first', 'closed', opKindName[kind]!, -1, -1));
    if (this.op) {
      return Promise.reject(new CollectiveError(`${opKindName[kind]} called while ${this.op.name} is running; await each collective`, 'mismatch', opKindName[kind]!, -1, v.generation));
    }
    if (this.departed.size > 0) {
      const who = [...this.departed].join(', ');
      return Promise.reject(new CollectiveError(`${opKindName[kind]} after rank ${who} left generation ${v.generation}`, 'closed', opKindName[kind]!, [...this.departed][0]!, v.generation));
    }
    const seq = ++this.seq;
    const name = `${opKindName[kind]}#${seq}`;
    return new Promise<T>((resolve, reject) => {
      let finished = false;
      const progress = () => {
        this.lastProgressMs = Date.now();
      };
      const done = (value: T) => {
        if (finished) return;
        finished = true;
        if (this.op === op) this.clearOp();
        resolve(value);
      };
      const handlers = setup({ done, progress });
      const op: ActiveOp = {
        seq,
        kind,
        name,
        onData: handlers.onData,
        fail: (e) => {
          if (finished) return;
          finished = true;
          reject(e);
        },
      };
      this.op = op;
      progress();
      const check = () => {
        if (this.op !== op) return;
        const idle = Date.now() - this.lastProgressMs;
        if (idle >= this.options.timeoutMs) {
          const prev = mod(v.rank - 1, v.worldSize);
          this.fail(this.error('timeout', `no data from rank ${prev} for ${this.options.timeoutMs} ms; rank ${prev} (or a rank before it) is presumed lost`, prev));
        } else {
          this.timer = setTimeout(check, this.options.timeoutMs - idle + 5);
        }
      };
      this.timer = setTimeout(check, this.options.timeoutMs);
      const early = this.early.filter((f) => f.opSeq === seq);
      this.early = this.early.filter((f) => f.opSeq !== seq);
      for (const f of early) {
        if (this.op !== op) break;
        this.onFrameForOp(op, f);
      }
      // Always start: this rank's own frames must go out even if frames that arrived early completed its part.
      handlers.start().catch((e) => this.fail(e instanceof CollectiveError ? e : this.error('closed', (e as Error).message)));
    });
  }

  private onFrameForOp(op: ActiveOp, f: DecodedFrame): void {
    if (f.op !== op.kind) {
      this.fail(this.error('mismatch', `previous rank is in ${opKindName[f.op] ?? f.op}#${f.opSeq}, this rank in ${op.name}`));
      return;
    }
    try {
      op.onData(f);
    } catch (e) {
      this.fail(e instanceof CollectiveError ? e : this.error('mismatch', (e as Error).message));
    }
  }

  // ---- frames out -------------------------------------------------------------------------------------------

  /** A frame with room for `payloadBytes`, from the pool when it has the common (full-chunk) size. */
  private frame(h: FrameHeader, payloadBytes: number): { frame: Buffer; payloadOffset: number } {
    const free = this.pool.get(payloadBytes);
    const reused = free?.pop();
    if (reused) {
      const payloadOffset = this.encoder.writeHeader(reused, h, payloadBytes);
      return { frame: reused, payloadOffset };
    }
    return this.encoder.allocate(h, payloadBytes);
  }

  private release(frame: Buffer, payloadBytes: number): void {
    if (payloadBytes < this.chunkElements * 2) return; // pool only full chunks (fp32 and fp16)
    let free = this.pool.get(payloadBytes);
    if (!free) this.pool.set(payloadBytes, (free = []));
    if (free.length < 32) free.push(frame);
  }

  /** Sends a frame whose payload is filled by `fill`; returns false when the transport wants a drain. */
  private send(
    h: FrameHeader,
    elements: number,
    progress: () => void,
    fill: (f32: Float32Array | null, f16: Uint16Array | null) => void,
  ): boolean {
    const bytesPer = h.dtype === DType.FLOAT16 ? 2 : 4;
    const payloadBytes = elements * bytesPer;
    const { frame, payloadOffset } = this.frame(h, payloadBytes);
    const at = frame.byteOffset + payloadOffset;
    if (bytesPer === 4) fill(new Float32Array(frame.buffer, at, elements), null);
    else fill(null, new Uint16Array(frame.buffer, at, elements));
    return this.transport.sendNext(frame, () => {
      progress();
      this.release(frame, payloadBytes);
    });
  }

  /** Hands a received frame back to the transport; call once, when nothing refers to it any more. */
  private recycle(f: DecodedFrame): void {
    this.transport.recycle?.(f.raw);
  }

  /** Sends a received (already used) frame on as the next step, or hands it back when this is its last hop. */
  private forwardOrRecycle(f: DecodedFrame, forward: boolean): void {
    if (forward) this.transport.sendNext(patchForward(f, f.step + 1, this.rank), () => this.recycle(f));
    else this.recycle(f);
  }

  private scratchF32(n: number): Float32Array {
    if (this.scratch.length < n) this.scratch = new Float32Array(Math.max(n, this.chunkElements));
    return this.scratch.subarray(0, n);
  }

  /** The payload as float32 elements; copied into scratch when gRPC's buffer is not 4-byte aligned. */
  private payloadF32(p: Buffer): Float32Array {
    const n = p.length >> 2;
    if ((p.byteOffset & 3) === 0) return new Float32Array(p.buffer, p.byteOffset, n);
    const s = this.scratchF32(n);
    p.copy(Buffer.from(s.buffer, s.byteOffset, n * 4), 0, 0, n * 4);
    return s;
  }

  private payloadF16(p: Buffer): Uint16Array {
    const n = p.length >> 1;
    if ((p.byteOffset & 1) === 0) return new Uint16Array(p.buffer, p.byteOffset, n);
    if (this.scratch16.length < n) this.scratch16 = new Uint16Array(Math.max(n, this.chunkElements));
    const s = this.scratch16.subarray(0, n);
    p.copy(Buffer.from(s.buffer, s.byteOffset, n * 2), 0, 0, n * 2);
    return s;
  }

  private chunks(elements: number): number {
    return Math.max(1, Math.ceil(elements / this.chunkElements));
  }

  // ---- all-reduce -------------------------------------------------------------------------------------------

  /** In-place ring all-reduce (sum) of `buf`. Every rank must pass the same length. */
  allReduceSum(buf: Float32Array, fp16Wire: boolean): Promise<void> {
    const v = this.view;
    if (v && v.worldSize === 1 && !this.failure) {
      if (fp16Wire) roundThroughHalf(buf);
      return Promise.resolve();
    }
    return this.run<void>(OpKind.ALL_REDUCE, ({ done, progress }) => {
      const { rank: r, worldSize: n, generation } = v!;
      const length = buf.length;
      const base = Math.floor(length / n);
      const rem = length % n;
      const segStart = (s: number) => s * base + Math.min(s, rem);
      const segLen = (s: number) => base + (s < rem ? 1 : 0);
      const C = this.chunkElements;
      const dtype = fp16Wire ? DType.FLOAT16 : DType.FLOAT32;
      const bytesPer = fp16Wire ? 2 : 4;
      let expected = 0;
      for (let k = 0; k <= n - 2; k++) expected += this.chunks(segLen(mod(r - k - 1, n))) + this.chunks(segLen(mod(r - k, n)));
      let received = 0;
      const seq = this.seq;
      const header = (step: number, segment: number, offset: number): FrameHeader => ({
        generation, opSeq: seq, kind: FrameKind.DATA, op: OpKind.ALL_REDUCE, dtype, srcRank: r, step, segment, offset, total: segLen(segment),
      });

      const onData = (f: DecodedFrame) => {
        const peer = mod(r - 1, n);
        if (f.dtype !== dtype) {
          throw this.error('mismatch', `rank ${peer} sends ${f.dtype === DType.FLOAT16 ? 'fp16' : 'fp32'} on the wire, this rank ${fp16Wire ? 'fp16' : 'fp32'}`, peer);
        }
        const step = f.step;
        const isRS = step < n - 1;
        const k = isRS ? step : step - (n - 1);
        const seg = isRS ? mod(r - k - 1, n) : mod(r - k, n);
        const count = f.payload.length / bytesPer;
        if (step > 2 * n - 3 || f.segment !== seg || f.total !== segLen(seg) || !Number.isInteger(count) || f.offset + count > segLen(seg)) {
          throw this.error(
            'mismatch',
            `rank ${peer} sent step ${step} segment ${f.segment} of ${f.total} elements at offset ${f.offset}; this rank expects segment ${seg} of ${segLen(seg)} elements (tensor of ${length} elements over ${n} ranks): do all ranks pass the same sizes?`,
            peer,
          );
        }
        const at = segStart(seg) + f.offset;
        const local = buf.subarray(at, at + count);
        if (isRS) {
          // The sum goes into the received frame's payload, which is then forwarded as it is (header patched):
          // no new frame, no extra copy.
          const last = k === n - 2;
          if (!fp16Wire) {
            const incoming = this.payloadF32(f.payload);
            if (last) addIntoBoth(incoming, local, count);
            else addInto(incoming, local, count);
            if (incoming.buffer !== f.raw.buffer) f.payload.set(new Uint8Array(incoming.buffer, incoming.byteOffset, count * 4));
          } else {
            const incoming = this.payloadF16(f.payload);
            // One pass: decode, add in fp32, encode. The owner keeps exactly what the others will receive, so all
            // ranks end bit-identical.
            if (last) addHalfInPlaceKeep(incoming, local, new Uint32Array(local.buffer, local.byteOffset, count), count);
            else addHalfInPlace(incoming, local, count);
            if (incoming.buffer !== f.raw.buffer) f.payload.set(new Uint8Array(incoming.buffer, incoming.byteOffset, count * 2));
          }
          // For the last reduce-scatter step, step + 1 is all-gather step 0 (wire step N-1).
          this.transport.sendNext(patchForward(f, step + 1, r), () => {
            progress();
            this.recycle(f);
          });
        } else {
          if (!fp16Wire) {
            f.payload.copy(Buffer.from(local.buffer, local.byteOffset, count * 4));
          } else {
            halfToFloatBits(this.payloadF16(f.payload), new Uint32Array(local.buffer, local.byteOffset, count), count);
          }
          this.forwardOrRecycle(f, k < n - 2);
        }
        if (++received === expected) done();
      };

      const start = async () => {
        // Reduce-scatter step 0: this rank's own segment r, straight from its buffer.
        const len = segLen(r);
        const s0 = segStart(r);
        for (let off = 0, c = 0, total = this.chunks(len); c < total; c++, off += C) {
          if (this.failure || this.view !== v) return;
          const count = Math.min(C, len - off);
          const src = buf.subarray(s0 + off, s0 + off + count);
          const ok = this.send(header(0, r, off), count, progress, (out, out16) => {
            if (out) out.set(src);
            else floatToHalf(new Uint32Array(src.buffer, src.byteOffset, count), out16!);
          });
          if (!ok && c + 1 < total) await this.transport.drained();
        }
      };
      return { onData, start };
    });
  }

  // ---- all-gather, broadcast, barrier -----------------------------------------------------------------------

  /** Every rank's block, in rank order (this rank's entry is `block` itself). Blocks may differ in length. */
  allGather(block: Float32Array, kind: OpKind = OpKind.ALL_GATHER): Promise<Float32Array[]> {
    const v = this.view;
    if (v && v.worldSize === 1 && !this.failure) return Promise.resolve([block]);
    return this.run<Float32Array[]>(kind, ({ done, progress }) => {
      const { rank: r, worldSize: n, generation } = v!;
      const C = this.chunkElements;
      const seq = this.seq;
      const out: (Float32Array | undefined)[] = new Array(n).fill(undefined);
      out[r] = block;
      const got = new Array<number>(n).fill(0);
      let pendingOrigins = n - 1;
      let sentOwn = false;
      const maybeDone = () => {
        if (sentOwn && pendingOrigins === 0) done(out as Float32Array[]);
      };
      const onData = (f: DecodedFrame) => {
        const peer = mod(r - 1, n);
        const o = f.segment;
        const count = f.payload.length / 4;
        if (o >= n || o === r || f.step !== mod(r - o, n) - 1 || f.dtype !== DType.FLOAT32 || !Number.isInteger(count)) {
          throw this.error('mismatch', `rank ${peer} sent a block of rank ${o} at hop ${f.step}; not expected here`, peer);
        }
        let dst = out[o];
        if (!dst) out[o] = dst = new Float32Array(f.total);
        if (dst.length !== f.total || f.offset + count > dst.length) {
          throw this.error('mismatch', `rank ${o}'s block is announced as ${f.total} elements, then ${dst.length}`, o);
        }
        f.payload.copy(Buffer.from(dst.buffer, dst.byteOffset + f.offset * 4, count * 4));
        this.forwardOrRecycle(f, (r + 1) % n !== o);
        if (++got[o] === this.chunks(dst.length) && --pendingOrigins === 0) maybeDone();
      };
      const start = async () => {
        const len = block.length;
        for (let off = 0, c = 0, total = this.chunks(len); c < total; c++, off += C) {
          if (this.failure || this.view !== v) return;
          const count = Math.min(C, len - off);
          const h: FrameHeader = { generation, opSeq: seq, kind: FrameKind.DATA, op: kind, dtype: DType.FLOAT32, srcRank: r, step: 0, segment: r, offset: off, total: len };
          if (!this.send(h, count, progress, (o) => o!.set(block.subarray(off, off + count))) && c + 1 < total) await this.transport.drained();
        }
        sentOwn = true;
        maybeDone();
      };
      return { onData, start };
    });
  }

  /** Copies root's `data` into every rank's `data` (same length on every rank). */
  broadcast(data: Float32Array, root: number): Promise<void> {
    const v = this.view;
    if (v && v.worldSize === 1 && !this.failure) return Promise.resolve();
    return this.run<void>(OpKind.BROADCAST, ({ done, progress }) => {
      const { rank: r, worldSize: n, generation } = v!;
      const C = this.chunkElements;
      const seq = this.seq;
      const expected = this.chunks(data.length);
      let received = 0;
      const onData = (f: DecodedFrame) => {
        const peer = mod(r - 1, n);
        const count = f.payload.length / 4;
        if (r === root || f.segment !== root || f.step !== mod(r - root, n) - 1 || f.dtype !== DType.FLOAT32 || !Number.isInteger(count)) {
          throw this.error('mismatch', `rank ${peer} sent a broadcast from root ${f.segment}; this rank expects root ${root}`, peer);
        }
        if (f.total !== data.length || f.offset + count > data.length) {
          throw this.error('mismatch', `root ${root} broadcasts ${f.total} elements; this rank's buffer holds ${data.length}`, root);
        }
        f.payload.copy(Buffer.from(data.buffer, data.byteOffset + f.offset * 4, count * 4));
        this.forwardOrRecycle(f, (r + 1) % n !== root);
        if (++received === expected) done();
      };
      const start = async () => {
        if (r !== root) return;
        let pending = expected;
        const written = () => {
          progress();
          if (--pending === 0) done();
        };
        for (let off = 0, c = 0; c < expected; c++, off += C) {
          if (this.failure || this.view !== v) return;
          const count = Math.min(C, data.length - off);
          const h: FrameHeader = { generation, opSeq: seq, kind: FrameKind.DATA, op: OpKind.BROADCAST, dtype: DType.FLOAT32, srcRank: r, step: 0, segment: r, offset: off, total: data.length };
          if (!this.send(h, count, written, (o) => o!.set(data.subarray(off, off + count))) && c + 1 < expected) await this.transport.drained();
        }
      };
      return { onData, start };
    });
  }

  /** Resolves once every rank has entered the barrier. */
  async barrier(): Promise<void> {
    await this.allGather(new Float32Array(0), OpKind.BARRIER);
  }
}

// Tight loops as top-level functions with one argument type each, so that V8 keeps them monomorphic.

/** acc[i] += x[i] */
function addInto(acc: Float32Array, x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + x[i]!;
}

/** acc[i] += x[i]; x[i] = acc[i] */
function addIntoBoth(acc: Float32Array, x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const s = acc[i]! + x[i]!;
    acc[i] = s;
    x[i] = s;
  }
}

/** What a value looks like after a trip through fp16 (used so that a world of one matches a larger world). */
function roundThroughHalf(buf: Float32Array): void {
  const h = new Uint16Array(buf.length);
  const bits = new Uint32Array(buf.buffer, buf.byteOffset, buf.length);
  floatToHalf(bits, h);
  halfToFloatBits(h, bits, buf.length);
}
