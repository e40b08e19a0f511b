/**
 * The gRPC implementation of `Transport` (@grpc/grpc-js), following proto/collective.proto.
 *
 * Each rank dials its ring predecessor once per generation (`Link`); the predecessor writes data on the response
 * side of that stream. Data therefore always arrives at a gRPC *client*, whose HTTP/2 flow-control window can be
 * raised (`grpc-node.flow_control_window`; the server side has no such option and stays at 64 KiB, which caps
 * throughput at a few hundred MB/s). Messages are Buffers passed through unchanged (no protobuf objects), and
 * the message-size limits are set explicitly on both sides.
 *
 * Data frames bypass grpc-js's message layer where its internals allow (`directFraming`, see h2-direct.ts): the
 * sender writes prefix + frame to the call's HTTP/2 stream from one buffer, the receiver assembles messages into
 * pooled buffers. Handshake per stream: the predecessor writes HELLO (response side); the successor, once it has
 * taken over its receiving side, answers HELLO (request side); only then does the predecessor count the stream
 * as connected and send data, so no data can reach grpc-js's decoder after the take-over.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Http2Stream } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { CollectiveError } from './errors';
import { decodeFrame, FrameEncoder, FrameKind } from './frame';
import { FramePool, MessageAssembler, serverCallHttp2Stream, takeOverClientReceive, withGrpcPrefix } from './h2-direct';
import type { LinkSide, PeerAddress, RingView, Transport, TransportEvents } from './transport';

export const LINK_METHOD_PATH = '/blip2.collective.v1.Collective/Link';

const passThrough = (b: Buffer): Buffer => b;

/** A bidirectional-streaming method at `path` whose messages are Buffers passed through as they are. */
export function passThroughBidiMethod(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: true,
    responseStream: true,
    requestSerialize: passThrough,
    requestDeserialize: passThrough,
    responseSerialize: passThrough,
    responseDeserialize: passThrough,
  };
}

/** The service definition for grpc-js, with Buffer pass-through (de)serialisers. */
export const collectiveServiceDefinition: grpc.ServiceDefinition = { Link: passThroughBidiMethod(LINK_METHOD_PATH) };

/** PEM material for mutual TLS. Every rank presents `certPem` and accepts peers whose certificate `caPem` signed. */
export interface CollectiveTlsOptions {
  caPem: Buffer | string;
  certPem: Buffer | string;
  keyPem: Buffer | string;
  /** Name to check in the peer's certificate instead of the dialled host. Default: the dialled host. */
  serverNameOverride?: string;
}

export interface GrpcTransportOptions {
  jobId: string;
  /** The job's shared secret; sent as `authorization: Bearer <token>` and checked in constant time. */
  token: string;
  listen: { host: string; port: number };
  tls?: CollectiveTlsOptions;
  /** How long `connect` keeps dialling and waiting for the successor. */
  timeoutMs: number;
  /** Largest message sent or accepted (both directions, set explicitly; gRPC's default is 4 MiB). */
  maxMessageBytes: number;
  /** HTTP/2 flow-control window of the receiving (client) side. */
  flowControlWindowBytes: number;
  /**
   * Parallel streams per neighbour link. grpc-js hands a stream's next message to HTTP/2 only after the previous
   * one was written out, so one stream has one message in flight; several keep more queued below JavaScript.
   */
  streamsPerLink: number;
  /**
   * Write and read data frames directly on the calls' HTTP/2 streams (same bytes on the wire; no per-message copy
   * or allocation in grpc-js). Falls back to grpc-js's public path when its internals are not where expected.
   */
  directFraming: boolean;
}

/** Bytes written directly but not yet taken by HTTP/2 before `sendNext` asks the caller to wait for `drained()`. */
const SEND_QUEUE_HIGH_BYTES = 8 * 1024 * 1024;
const SEND_QUEUE_LOW_BYTES = SEND_QUEUE_HIGH_BYTES / 2;
/** Receive buffers kept for reuse (each holds one message of up to maxMessageBytes). */
const RECEIVE_POOL_BUFFERS = 48;

export const metadataKeys = {
  authorization: 'authorization',
  jobId: 'x-blip2-job-id',
  generation: 'x-blip2-generation',
  rank: 'x-blip2-rank',
  /** "i/K": this is stream i of the K streams per link. */
  stream: 'x-blip2-stream',
} as const;

type ServerLink = grpc.ServerDuplexStream<Buffer, Buffer>;
type ClientLink = grpc.ClientDuplexStream<Buffer, Buffer>;

interface PendingCall {
  call: ServerLink;
  callerRank: number;
  stream: number;
  streams: number;
  generation: number;
  timer: NodeJS.Timeout;
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

function refuse(call: ServerLink, code: grpc.status, details: string): void {
  call.emit('error', { code, details, metadata: new grpc.Metadata() });
}

export class GrpcTransport implements Transport {
  private readonly server: grpc.Server;
  private readonly tokenDigest: Buffer;
  private readonly encoder: FrameEncoder;
  private readonly clients = new Map<string, grpc.Client>();
  private events: TransportEvents | null = null;
  private view: RingView | null = null;
  /** The highest generation this rank has been asked to connect for; older callers are refused. */
  private generation = 0;
  private prevCalls: ClientLink[] = [];
  private nextCalls: (ServerLink | undefined)[] = [];
  /** The HTTP/2 stream under each next call when data is written directly, else null. */
  private nextDirect: (Http2Stream | null)[] = [];
  /** Streams of the next rank that answered HELLO (they are ready for data). */
  private nextHello: boolean[] = [];
  private nextArrived = 0;
  /** Bytes written directly whose write has not completed. */
  private inFlightBytes = 0;
  private readonly pool: FramePool;
  /** How many links of the current generation use direct framing (for benchmarks and logs). */
  private directStats = { send: 0, receive: 0 };
  private roundRobin = 0;
  private readonly pending: PendingCall[] = [];
  private nextWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private drainWaiters: (() => void)[] = [];
  private closed = false;

  constructor(private readonly options: GrpcTransportOptions) {
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': options.maxMessageBytes,
      'grpc.max_send_message_length': options.maxMessageBytes,
    });
    this.tokenDigest = digest(options.token);
    this.encoder = new FrameEncoder(options.jobId);
    this.pool = new FramePool(options.maxMessageBytes, RECEIVE_POOL_BUFFERS);
    this.server.addService(collectiveServiceDefinition, { Link: (call: ServerLink) => this.onIncoming(call) });
  }

  async listen(): Promise<{ host: string; port: number }> {
    const { host, port } = this.options.listen;
    const tls = this.options.tls;
    const creds = tls
      ? grpc.ServerCredentials.createSsl(
          Buffer.from(tls.caPem),
          [{ private_key: Buffer.from(tls.keyPem), cert_chain: Buffer.from(tls.certPem) }],
          true,
        )
      : grpc.ServerCredentials.createInsecure();
    const bound = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, creds, (err, p) =>
        err ? reject(new Error(`cannot listen on ${host}:${port}: ${err.message}`)) : resolve(p),
      ),
    );
    return { host, port: bound };
  }

  setEvents(events: TransportEvents): void {
    this.events = events;
  }

  async connect(view: RingView): Promise<void> {
    if (this.closed) throw new Error('transport is closed');
    if (view.generation < this.generation) {
      throw new CollectiveError(
        `generation ${view.generation} is older than this rank's generation ${this.generation}`,
        'refused', 'connect', -1, view.generation,
      );
    }
    this.disconnect();
    this.view = view;
    this.generation = view.generation;
    const n = view.worldSize;
    if (n === 1) return;
    const prevRank = (view.rank - 1 + n) % n;
    const nextRank = (view.rank + 1) % n;
    const prev = view.peers.find((p) => p.rank === prevRank);
    if (!prev) throw new CollectiveError(`no address for rank ${prevRank}`, 'refused', 'connect', prevRank, view.generation);

    const nextArrived = new Promise<void>((resolve, reject) => {
      this.nextWaiter = { resolve, reject };
    });
    this.nextCalls = new Array<ServerLink | undefined>(this.options.streamsPerLink).fill(undefined);
    this.nextDirect = new Array<Http2Stream | null>(this.options.streamsPerLink).fill(null);
    this.nextHello = new Array<boolean>(this.options.streamsPerLink).fill(false);
    this.nextArrived = 0;
    this.directStats = { send: 0, receive: 0 };
    // Adopt a successor's call that arrived before we knew this generation; refuse older ones.
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      if (p.generation === view.generation) this.adopt(p.call, p.callerRank, p.stream, p.streams);
      else if (p.generation < view.generation) refuse(p.call, grpc.status.FAILED_PRECONDITION, `stale generation ${p.generation}; current is ${view.generation}`);
      else this.hold(p.call, p.callerRank, p.generation, p.stream, p.streams);
    }
    const deadline = Date.now() + this.options.timeoutMs;
    const timer = setTimeout(() => {
      this.nextWaiter?.reject(
        new CollectiveError(
          `rank ${nextRank} did not open its link to rank ${view.rank} within ${this.options.timeoutMs} ms (generation ${view.generation})`,
          'timeout', 'connect', nextRank, view.generation,
        ),
      );
      this.nextWaiter = null;
    }, this.options.timeoutMs);
    try {
      const dials = Array.from({ length: this.options.streamsPerLink }, (_, i) => this.dialPrev(prev, view, deadline, i));
      await Promise.all([...dials, nextArrived]);
    } catch (e) {
      this.disconnect();
      throw e;
    } finally {
      clearTimeout(timer);
      this.nextWaiter = null;
    }
  }

  private client(peer: PeerAddress): grpc.Client {
    const target = `${peer.host.includes(':') ? `[${peer.host}]` : peer.host}:${peer.port}`;
    let c = this.clients.get(target);
    if (c) return c;
    const tls = this.options.tls;
    const creds = tls
      ? grpc.credentials.createSsl(Buffer.from(tls.caPem), Buffer.from(tls.keyPem), Buffer.from(tls.certPem))
      : grpc.credentials.createInsecure();
    const channelOptions: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': this.options.maxMessageBytes,
      'grpc.max_send_message_length': this.options.maxMessageBytes,
      'grpc-node.flow_control_window': this.options.flowControlWindowBytes,
      'grpc.enable_retries': 0,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 500,
    };
    if (tls?.serverNameOverride) channelOptions['grpc.ssl_target_name_override'] = tls.serverNameOverride;
    c = new grpc.Client(target, creds, channelOptions);
    this.clients.set(target, c);
    return c;
  }

  private dialPrev(prev: PeerAddress, view: RingView, deadline: number, stream: number): Promise<void> {
    const md = new grpc.Metadata();
    md.set(metadataKeys.authorization, `Bearer ${this.options.token}`);
    md.set(metadataKeys.jobId, this.options.jobId);
    md.set(metadataKeys.generation, String(view.generation));
    md.set(metadataKeys.rank, String(view.rank));
    md.set(metadataKeys.stream, `${stream}/${this.options.streamsPerLink}`);
    const attempt = (): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const call = this.client(prev).makeBidiStreamRequest(LINK_METHOD_PATH, passThrough, passThrough, md, {
          deadline: Infinity,
        }) as ClientLink;
        let settled = false;
        const fail = (code: grpc.status | undefined, details: string) => {
          if (settled) return;
          settled = true;
          call.removeAllListeners();
          call.on('error', () => {});
          call.cancel();
          const retriable = code === grpc.status.UNAVAILABLE || code === undefined;
          if (retriable && Date.now() + 100 < deadline && !this.closed && this.view === view) {
            setTimeout(() => attempt().then(resolve, reject), 100);
            return;
          }
          reject(
            new CollectiveError(
              `rank ${prev.rank} (${prev.host}:${prev.port}) refused the link from rank ${view.rank}, generation ${view.generation}: ${details}`,
              code === grpc.status.UNAVAILABLE ? 'timeout' : 'refused', 'connect', prev.rank, view.generation,
              { cause: { code, details } },
            ),
          );
        };
        call.once('data', (buf: Buffer) => {
          if (settled) return;
          let ok = false;
          try {
            const f = decodeFrame(buf);
            ok = f.kind === FrameKind.HELLO && f.generation === view.generation && f.jobId === this.options.jobId;
          } catch {
            ok = false;
          }
          if (!ok) return fail(grpc.status.FAILED_PRECONDITION, 'bad HELLO frame');
          settled = true;
          call.removeAllListeners();
          this.prevCalls[stream] = call;
          this.attach(call, 'prev', prev.rank, view, stream);
          // Tells the predecessor that this stream is ready for data (after the receiving side was taken over).
          call.write(this.encoder.control(FrameKind.HELLO, view.generation, view.rank));
          resolve();
        });
        call.once('error', (e: grpc.ServiceError) => fail(e.code, e.details ?? e.message));
        call.once('end', () => fail(undefined, 'stream ended before HELLO'));
      });
    return attempt();
  }

  private onIncoming(call: ServerLink): void {
    const md = call.metadata;
    const auth = String(md.get(metadataKeys.authorization)[0] ?? '');
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : '';
    // Constant time: compare fixed-length digests, so neither content nor length leaks through timing.
    if (!timingSafeEqual(digest(token), this.tokenDigest)) {
      refuse(call, grpc.status.UNAUTHENTICATED, 'unauthenticated');
      return;
    }
    const jobId = String(md.get(metadataKeys.jobId)[0] ?? '');
    if (jobId !== this.options.jobId) {
      refuse(call, grpc.status.PERMISSION_DENIED, `job id "${jobId}" is not this job ("${this.options.jobId}")`);
      return;
    }
    const generation = Number(md.get(metadataKeys.generation)[0]);
    const callerRank = Number(md.get(metadataKeys.rank)[0]);
    const [stream, streams] = String(md.get(metadataKeys.stream)[0] ?? '0/1').split('/').map(Number) as [number, number];
    if (!Number.isSafeInteger(generation) || generation < 0 || !Number.isSafeInteger(callerRank) || callerRank < 0 || !(stream >= 0 && stream < streams)) {
      refuse(call, grpc.status.INVALID_ARGUMENT, 'x-blip2-generation and x-blip2-rank must be non-negative integers, x-blip2-stream "i/K" with i < K');
      return;
    }
    if (generation < this.generation) {
      refuse(call, grpc.status.FAILED_PRECONDITION, `stale generation ${generation}; current is ${this.generation}`);
      return;
    }
    if (this.view && generation === this.view.generation) this.adopt(call, callerRank, stream, streams);
    else this.hold(call, callerRank, generation, stream, streams);
  }

  /** Keeps a call for a generation this rank has not connected for yet, until connect() or the timeout. */
  private hold(call: ServerLink, callerRank: number, generation: number, stream: number, streams: number): void {
    const p: PendingCall = {
      call,
      callerRank,
      stream,
      streams,
      generation,
      timer: setTimeout(() => {
        const i = this.pending.indexOf(p);
        if (i >= 0) this.pending.splice(i, 1);
        refuse(call, grpc.status.UNAVAILABLE, `this rank did not join generation ${generation} within ${this.options.timeoutMs} ms`);
      }, this.options.timeoutMs),
    };
    call.on('error', () => {});
    call.on('cancelled', () => {
      clearTimeout(p.timer);
      const i = this.pending.indexOf(p);
      if (i >= 0) this.pending.splice(i, 1);
    });
    this.pending.push(p);
  }

  private adopt(call: ServerLink, callerRank: number, stream: number, streams: number): void {
    const view = this.view!;
    const expected = (view.rank + 1) % view.worldSize;
    if (callerRank !== expected) {
      refuse(call, grpc.status.FAILED_PRECONDITION, `rank ${callerRank} is not the successor of rank ${view.rank} in generation ${view.generation} (expected ${expected})`);
      return;
    }
    if (streams !== this.options.streamsPerLink) {
      refuse(call, grpc.status.FAILED_PRECONDITION, `rank ${callerRank} opens ${streams} streams per link; this rank uses ${this.options.streamsPerLink}`);
      return;
    }
    if (this.nextCalls[stream]) {
      refuse(call, grpc.status.ALREADY_EXISTS, `rank ${callerRank} already has stream ${stream} in generation ${view.generation}`);
      return;
    }
    call.removeAllListeners();
    this.nextCalls[stream] = call;
    call.write(this.encoder.control(FrameKind.HELLO, view.generation, view.rank));
    const direct = this.options.directFraming ? serverCallHttp2Stream(call) : null;
    this.nextDirect[stream] = direct;
    if (direct) {
      this.directStats.send++;
      // grpc-js listens once; a failed direct write after that must not become an unhandled 'error'. The call
      // reports the loss (attach).
      direct.on('error', () => {});
    }
    this.attach(call, 'next', callerRank, view, stream);
    // The stream counts once the successor answers HELLO (see attach).
  }

  private attach(call: ClientLink | ServerLink, side: LinkSide, peerRank: number, view: RingView, stream: number): void {
    let lost = false;
    let left = false;
    const isCurrent = () => this.view === view && (side === 'prev' ? this.prevCalls[stream] === call : this.nextCalls[stream] === call);
    const onLost = (reason: string) => {
      if (lost || left || !isCurrent()) return;
      lost = true;
      this.events?.onLinkLost(side, peerRank, reason);
      this.flushDrainWaiters();
    };
    const deliver = (buf: Buffer) => {
      if (!isCurrent()) return;
      // Control frames are small; only those are looked at here.
      if (buf.length < 1024) {
        try {
          const f = decodeFrame(buf);
          if (f.kind === FrameKind.HELLO && side === 'next' && f.generation === view.generation && f.jobId === this.options.jobId) {
            if (!this.nextHello[stream]) {
              this.nextHello[stream] = true;
              if (++this.nextArrived === this.options.streamsPerLink) this.nextWaiter?.resolve();
            }
            return;
          }
          if (f.kind === FrameKind.BYE && f.generation === view.generation) {
            left = true;
            // The peer has left once every stream of the link said BYE (frames on other streams may still come).
            if (++this.byes[side] === this.options.streamsPerLink) this.events?.onPeerLeft(side, peerRank);
            this.flushDrainWaiters();
            return;
          }
        } catch {
          // malformed: the ring reports it
        }
      }
      this.events?.onFrame(buf, side);
    };
    // grpc-js's path (also keeps the call flowing, so that its 'end' and status arrive).
    call.on('data', deliver);
    if (side === 'prev' && this.options.directFraming) {
      const assembler = new MessageAssembler(this.options.maxMessageBytes, this.pool, deliver, (reason) => {
        onLost(`stream from rank ${peerRank}: ${reason}`);
        (call as ClientLink).cancel();
      });
      if (takeOverClientReceive(call, (chunk: Buffer) => assembler.write(chunk))) this.directStats.receive++;
    }
    call.on('error', (e: Error & { code?: number; details?: string }) =>
      onLost(`${side === 'prev' ? 'stream from' : 'stream to'} rank ${peerRank} failed: ${e.details ?? e.message}${e.code !== undefined ? ` (gRPC status ${grpc.status[e.code] ?? e.code})` : ''}`),
    );
    call.on('end', () => {
      // After BYE the peer half-closes; finish our side too so the call completes.
      if (left && side === 'next') this.endQuietly(call);
      onLost(`rank ${peerRank} closed its stream without BYE`);
    });
    call.on('close', () => onLost(`stream with rank ${peerRank} closed`));
    if (side === 'next') (call as ServerLink).on('cancelled', () => onLost(`rank ${peerRank} cancelled its stream (connection lost)`));
    if (side === 'next') call.on('drain', () => this.flushDrainWaiters());
  }

  private byes: Record<LinkSide, number> = { prev: 0, next: 0 };

  private endQuietly(call: ClientLink | ServerLink): void {
    try {
      call.end();
    } catch {
      // already gone
    }
  }

  private flushDrainWaiters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }

  sendNext(frame: Buffer, onWritten?: () => void): boolean {
    const k = this.nextCalls.length;
    if (k === 0) return true;
    const i = this.roundRobin++ % k;
    const call = this.nextCalls[i];
    if (!call) return true;
    const direct = this.nextDirect[i];
    try {
      if (!direct) return call.write(frame, onWritten);
      const out = withGrpcPrefix(frame);
      const bytes = out.length;
      this.inFlightBytes += bytes;
      direct.write(out, (err?: Error | null) => {
        this.inFlightBytes -= bytes;
        if (!err) onWritten?.();
        if (err || this.inFlightBytes <= SEND_QUEUE_LOW_BYTES) this.flushDrainWaiters();
      });
      return this.inFlightBytes < SEND_QUEUE_HIGH_BYTES;
    } catch {
      return true;
    }
  }

  drained(): Promise<void> {
    const full = this.inFlightBytes >= SEND_QUEUE_HIGH_BYTES || this.nextCalls.some((c, i) => !this.nextDirect[i] && c?.writableNeedDrain);
    if (!full) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Takes back a frame that `onFrame` delivered, once nothing refers to it any more (its buffer is reused). */
  recycle(frame: Buffer): void {
    this.pool.recycle(frame);
  }

  /** How many streams of the current generation write (send) and read (receive) data frames directly. */
  get directFramingStreams(): { send: number; receive: number } {
    return { ...this.directStats };
  }

  sendPrev(frame: Buffer): void {
    try {
      this.prevCalls[0]?.write(frame);
    } catch {
      // best effort: the link may already be gone
    }
  }

  disconnect(): void {
    const prev = this.prevCalls;
    const next = this.nextCalls;
    const view = this.view;
    this.prevCalls = [];
    this.nextCalls = [];
    this.nextDirect = [];
    this.nextHello = [];
    this.byes = { prev: 0, next: 0 };
    this.view = null;
    for (const call of [...prev, ...next]) {
      if (!call || !view) continue;
      // Keep draining what the peer still sends (so its writes complete), but report nothing more.
      call.removeAllListeners();
      call.on('error', () => {});
      call.on('data', () => {});
      if (next.includes(call as ServerLink)) call.on('end', () => this.endQuietly(call));
      try {
        call.write(this.encoder.control(FrameKind.BYE, view.generation, view.rank));
      } catch {
        // the link is already gone
      }
      this.endQuietly(call);
    }
    this.flushDrainWaiters();
  }

  async close(graceMs: number): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.disconnect();
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      refuse(p.call, grpc.status.UNAVAILABLE, 'rank is shutting down');
    }
    // Waits until the neighbours have taken our last frames and BYE (or gives up after a while).
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
