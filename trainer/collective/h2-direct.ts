/**
 * Direct framing: gRPC messages written to and read from the HTTP/2 stream beneath a grpc-js call.
 *
 * grpc-js copies every message it sends into a fresh buffer (to put the 5-byte length prefix in front), and
 * every message it receives into another fresh buffer (`Buffer.concat` of the 16 KiB HTTP/2 DATA frames), then
 * pauses the stream and delivers the message one event-loop turn later. For 1 MiB tensor chunks those two copies
 * and two allocations per message (and the garbage collections they cause) cost more CPU than the rest of the
 * collective. The wire format stays exactly gRPC's (length-prefixed messages on the call's HTTP/2 stream, headers
 * and trailers by grpc-js); only the data direction of a `Link` stream bypasses grpc-js's message layer:
 *   - the sender (the server side of the call) writes `prefix + frame` from one buffer: frames carry headroom for
 *     the prefix (frame.ts), so nothing is copied;
 *   - the receiver (the client side) parses the length prefixes itself and assembles each message into a pooled
 *     buffer (one copy, no allocation), delivered synchronously in the same 'data' event.
 * The HTTP/2 streams are reached through grpc-js internals (checked against @grpc/grpc-js 1.14); when they are not
 * where expected, the transport uses grpc-js's public path, which produces the same bytes.
 */
import type { Http2Stream } from 'node:http2';
import { Duplex } from 'node:stream';
import { GRPC_PREFIX_BYTES } from './frame';

type Bag = Record<string, unknown>;
const field = (o: unknown, k: string): unknown => (o !== null && typeof o === 'object' ? (o as Bag)[k] : undefined);

function asHttp2Stream(s: unknown): Http2Stream | null {
  return s instanceof Duplex && 'session' in s && typeof (s as Partial<Http2Stream>).close === 'function' ? (s as Http2Stream) : null;
}

/** The HTTP/2 stream of a grpc-js server call (a handler's `call`), or null where grpc-js keeps it elsewhere. */
export function serverCallHttp2Stream(call: unknown): Http2Stream | null {
  // ServerDuplexStreamImpl.call is the BaseServerInterceptingCall when the server has no interceptors.
  return asHttp2Stream(field(field(call, 'call'), 'stream'));
}

/** grpc-js's Http2SubchannelCall under an established client call, or undefined. */
function clientSubchannelCall(call: unknown): unknown {
  // ClientDuplexStreamImpl.call (BaseStreamingInterceptingCall) .call (ResolvingCall) .child (RetryingCall, with
  // one underlying LoadBalancingCall when retries are off, or the LoadBalancingCall) .child (Http2SubchannelCall).
  let c = field(field(field(call, 'call'), 'call'), 'child');
  const under = field(c, 'underlyingCalls');
  if (Array.isArray(under)) {
    if (under.length !== 1) return undefined;
    c = field(under[0], 'call');
  }
  return field(c, 'child');
}

/** The HTTP/2 stream of an established grpc-js client call, or null where grpc-js keeps it elsewhere. */
export function clientCallHttp2Stream(call: unknown): Http2Stream | null {
  return asHttp2Stream(field(clientSubchannelCall(call), 'http2Stream'));
}

/**
 * Takes over the receiving side of an established client call: grpc-js's own 'data' listener (its message
 * decoder) is removed and `onChunk` gets the raw HTTP/2 DATA payloads instead. Returns false (and changes nothing)
 * when the stream is not where expected, grpc-js has anything other than its one listener on it, or its decoder
 * holds part of a message or messages not yet delivered. Call it only when the peer sends nothing more until told
 * (the transport does it right after the HELLO, see grpc-transport.ts). grpc-js keeps handling headers, trailers,
 * errors and the call's status.
 */
export function takeOverClientReceive(call: unknown, onChunk: (chunk: Buffer) => void): boolean {
  const sub = clientSubchannelCall(call);
  const s = asHttp2Stream(field(sub, 'http2Stream'));
  if (!s || s.listenerCount('data') !== 1) return false;
  const unpushed = field(sub, 'unpushedReadMessages');
  if (!Array.isArray(unpushed) || unpushed.length !== 0) return false;
  if (field(field(sub, 'decoder'), 'readState') !== 0) return false; // NO_DATA: at a message boundary
  s.removeAllListeners('data');
  s.on('data', onChunk);
  s.resume();
  return true;
}

/**
 * `frame` with gRPC's length prefix written into the 5 bytes in front of it, as one buffer over the same memory.
 * Frames made by `FrameEncoder`/`allocFrame` or received by the transport have that headroom; anything else is
 * copied.
 */
export function withGrpcPrefix(frame: Buffer): Buffer {
  let out: Buffer;
  if (frame.byteOffset >= GRPC_PREFIX_BYTES) {
    out = Buffer.from(frame.buffer, frame.byteOffset - GRPC_PREFIX_BYTES, frame.length + GRPC_PREFIX_BYTES);
  } else {
    out = Buffer.allocUnsafe(frame.length + GRPC_PREFIX_BYTES);
    frame.copy(out, GRPC_PREFIX_BYTES);
  }
  out[0] = 0; // not compressed
  out.writeUInt32BE(frame.length, 1);
  return out;
}

/**
 * Receive buffers for whole messages. Messages of at least `minPooledBytes` get a buffer of `capacityBytes`
 * (message at byte 5, as grpc-js places it) from a free list; `recycle` hands one back once nothing refers to it.
 */
export class FramePool {
  private readonly free: ArrayBuffer[] = [];
  private readonly bufferBytes: number;

  constructor(
    /** Largest message. */
    private readonly capacityBytes: number,
    /** Most buffers kept on the free list. */
    private readonly maxFree: number,
    private readonly minPooledBytes = 64 * 1024,
  ) {
    this.bufferBytes = GRPC_PREFIX_BYTES + capacityBytes;
  }

  take(length: number): Buffer {
    if (length >= this.minPooledBytes && length <= this.capacityBytes) {
      return Buffer.from(this.free.pop() ?? new ArrayBuffer(this.bufferBytes), GRPC_PREFIX_BYTES, length);
    }
    return Buffer.from(new ArrayBuffer(GRPC_PREFIX_BYTES + length), GRPC_PREFIX_BYTES, length);
  }

  /** Returns a buffer from `take` (others are ignored). The caller must hold no reference to it afterwards. */
  recycle(frame: Buffer): void {
    const ab = frame.buffer as ArrayBuffer;
    if (ab.byteLength !== this.bufferBytes || frame.byteOffset !== GRPC_PREFIX_BYTES || this.free.length >= this.maxFree) return;
    if (this.free.includes(ab)) return; // handed back twice: keep one entry, never two owners
    this.free.push(ab);
  }
}

/** Splits a byte stream of gRPC length-prefixed messages into whole messages in pooled buffers. */
export class MessageAssembler {
  private readonly head = Buffer.alloc(GRPC_PREFIX_BYTES);
  private headFill = 0;
  private msg: Buffer | null = null;
  private msgFill = 0;
  private dead = false;

  constructor(
    private readonly maxMessageBytes: number,
    private readonly pool: FramePool,
    private readonly deliver: (message: Buffer) => void,
    private readonly fail: (reason: string) => void,
  ) {}

  write(chunk: Buffer): void {
    const n = chunk.length;
    let p = 0;
    while (p < n && !this.dead) {
      const msg = this.msg;
      if (msg === null) {
        const take = Math.min(GRPC_PREFIX_BYTES - this.headFill, n - p);
        chunk.copy(this.head, this.headFill, p, p + take);
        this.headFill += take;
        p += take;
        if (this.headFill < GRPC_PREFIX_BYTES) return;
        this.headFill = 0;
        if (this.head[0] !== 0) return this.die(`compressed gRPC message (flag ${this.head[0]}); this link sends none`);
        const length = this.head.readUInt32BE(1);
        if (length > this.maxMessageBytes) return this.die(`received message of ${length} bytes, larger than maxMessageBytes ${this.maxMessageBytes}`);
        const m = this.pool.take(length);
        if (length === 0) {
          this.deliver(m);
          continue;
        }
        this.msg = m;
        this.msgFill = 0;
      } else {
        const take = Math.min(msg.length - this.msgFill, n - p);
        chunk.copy(msg, this.msgFill, p, p + take);
        this.msgFill += take;
        p += take;
        if (this.msgFill === msg.length) {
          this.msg = null;
          this.deliver(msg);
        }
      }
    }
  }

  private die(reason: string): void {
    this.dead = true;
    this.msg = null;
    this.fail(reason);
  }
}
