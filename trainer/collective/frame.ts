/**
 * Hand-written proto3 encoding of `blip2.collective.v1.Frame` (proto/collective.proto).
 *
 * Why by hand: a protobuf `bytes` field costs a copy into and out of a message object, and gRPC's default path
 * costs ~5x in throughput (engine-notes.md). Here a tensor chunk is written once into a frame buffer that is
 * already the serialised message, and a received frame's payload is a view of the buffer gRPC handed over.
 * Every numeric header field is fixed-width, so a received frame can be forwarded after patching `step` and
 * `src_rank` in place. The bytes are ordinary protobuf: `frame.test.ts` decodes them with protobufjs.
 */

export const FrameKind = { HELLO: 1, DATA: 2, ABORT: 3, BYE: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
export const OpKind = { ALL_REDUCE: 1, ALL_GATHER: 2, BROADCAST: 3, BARRIER: 4 } as const;
export type OpKind = (typeof OpKind)[keyof typeof OpKind];
export const DType = { FLOAT32: 1, FLOAT16: 2 } as const;
export type DType = (typeof DType)[keyof typeof DType];

export const opKindName: Record<number, string> = {
  [OpKind.ALL_REDUCE]: 'allReduce',
  [OpKind.ALL_GATHER]: 'allGather',
  [OpKind.BROADCAST]: 'broadcast',
  [OpKind.BARRIER]: 'barrier',
};

export interface FrameHeader {
  generation: number;
  opSeq: number;
  kind: FrameKind;
  op: number;
  dtype: number;
  srcRank: number;
  step: number;
  segment: number;
  offset: number;
  total: number;
}

export interface DecodedFrame extends FrameHeader {
  jobId: string;
  missingRank: number;
  message: string;
  /** A view into the received buffer (not copied; may be unaligned). */
  payload: Buffer;
  /** The whole received buffer and the byte positions of the patchable fields (for forwarding). */
  raw: Buffer;
  srcRankPos: number;
  stepPos: number;
}

// Tags: (field << 3) | wire type. Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
const T_JOB = (1 << 3) | 2;
const T_GEN = (2 << 3) | 1;
const T_SEQ = (3 << 3) | 1;
const T_KIND = (4 << 3) | 0;
const T_OP = (5 << 3) | 0;
const T_DTYPE = (6 << 3) | 0;
const T_SRC = (7 << 3) | 5;
const T_STEP = (8 << 3) | 5;
const T_SEG = (9 << 3) | 5;
const T_OFFSET = (10 << 3) | 1;
const T_TOTAL = (11 << 3) | 1;
const T_MISSING = (12 << 3) | 5;
const T_MESSAGE = (13 << 3) | 2;
const T_PADDING = (14 << 3) | 2;
const T_PAYLOAD = (15 << 3) | 2;

/**
 * gRPC's length prefix (1 flag byte, 4 bytes big-endian length). grpc-js hands a received message over as a view at
 * byte 5 of a fresh buffer, and the transport's own receive path does the same.
 */
export const GRPC_PREFIX_BYTES = 5;

/**
 * Every frame made here, and every frame the transport receives, has this many bytes free in front of it in its
 * own ArrayBuffer: the transport writes gRPC's length prefix there and sends prefix and frame as one buffer, so a
 * frame goes out without being copied (see grpc-transport.ts). A multiple of 8, so alignment is kept.
 */
export const FRAME_HEADROOM_BYTES = 8;

/** A zeroed buffer of `length` bytes with `FRAME_HEADROOM_BYTES` free in front of it. */
export function allocFrame(length: number): Buffer {
  return Buffer.from(new ArrayBuffer(FRAME_HEADROOM_BYTES + length), FRAME_HEADROOM_BYTES, length);
}

function varintBytes(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    n++;
  }
  return n;
}

function writeVarint(buf: Buffer, pos: number, value: number): number {
  while (value >= 0x80) {
    buf[pos++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 128);
  }
  buf[pos++] = value;
  return pos;
}

function writeFixed64(buf: Buffer, pos: number, value: number): number {
  buf.writeUInt32LE(value % 0x100000000, pos);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), pos + 4);
  return pos + 8;
}

/** Encodes frames of one job. */
export class FrameEncoder {
  private readonly jobBytes: Buffer;
  /** Bytes of fields 1..11 (job id through total). */
  private readonly fixedBytes: number;

  constructor(readonly jobId: string) {
    this.jobBytes = Buffer.from(jobId, 'utf8');
    this.fixedBytes = 1 + varintBytes(this.jobBytes.length) + this.jobBytes.length + 9 + 9 + 2 + 2 + 2 + 5 + 5 + 5 + 9 + 9;
  }

  /**
   * Header length (everything before the payload) and the padding that puts the payload at a multiple of 8 bytes
   * from the start of grpc-js's receive buffer.
   */
  layout(payloadBytes: number): { headerBytes: number; paddingBytes: number } {
    const base = this.fixedBytes + 2 + 1 + varintBytes(payloadBytes);
    const paddingBytes = (8 - ((base + GRPC_PREFIX_BYTES) % 8)) % 8;
    return { headerBytes: base + paddingBytes, paddingBytes };
  }

  /**
   * Allocates a DATA/HELLO frame with room for `payloadBytes` and writes its header. The payload region starts at
   * `payloadOffset` and is 8-byte aligned in its ArrayBuffer, so typed-array views over it are valid. The frame
   * has `FRAME_HEADROOM_BYTES` (at least) free in front of it.
   */
  allocate(h: FrameHeader, payloadBytes: number): { frame: Buffer; payloadOffset: number } {
    const { headerBytes } = this.layout(payloadBytes);
    const leadingPad = FRAME_HEADROOM_BYTES + ((8 - (headerBytes % 8)) % 8);
    const ab = new ArrayBuffer(leadingPad + headerBytes + payloadBytes);
    const frame = Buffer.from(ab, leadingPad, headerBytes + payloadBytes);
    this.writeHeader(frame, h, payloadBytes);
    return { frame, payloadOffset: headerBytes };
  }

  /** Writes the header of a frame whose payload has `payloadBytes` bytes; returns the payload's offset. */
  writeHeader(buf: Buffer, h: FrameHeader, payloadBytes: number): number {
    const { paddingBytes } = this.layout(payloadBytes);
    let p = 0;
    buf[p++] = T_JOB;
    p = writeVarint(buf, p, this.jobBytes.length);
    p += this.jobBytes.copy(buf, p);
    buf[p++] = T_GEN;
    p = writeFixed64(buf, p, h.generation);
    buf[p++] = T_SEQ;
    p = writeFixed64(buf, p, h.opSeq);
    buf[p++] = T_KIND;
    buf[p++] = h.kind;
    buf[p++] = T_OP;
    buf[p++] = h.op;
    buf[p++] = T_DTYPE;
    buf[p++] = h.dtype;
    buf[p++] = T_SRC;
    buf.writeUInt32LE(h.srcRank, p);
    p += 4;
    buf[p++] = T_STEP;
    buf.writeUInt32LE(h.step, p);
    p += 4;
    buf[p++] = T_SEG;
    buf.writeUInt32LE(h.segment, p);
    p += 4;
    buf[p++] = T_OFFSET;
    p = writeFixed64(buf, p, h.offset);
    buf[p++] = T_TOTAL;
    p = writeFixed64(buf, p, h.total);
    buf[p++] = T_PADDING;
    buf[p++] = paddingBytes;
    buf.fill(0, p, p + paddingBytes);
    p += paddingBytes;
    buf[p++] = T_PAYLOAD;
    p = writeVarint(buf, p, payloadBytes);
    return p;
  }

  /** A header-only frame (HELLO, BYE). */
  control(kind: FrameKind, generation: number, srcRank: number): Buffer {
    return this.allocate({ generation, opSeq: 0, kind, op: 0, dtype: 0, srcRank, step: 0, segment: 0, offset: 0, total: 0 }, 0).frame;
  }

  /** An ABORT frame (small; allocated each time). */
  abort(generation: number, opSeq: number, srcRank: number, missingRank: number, message: string): Buffer {
    const msg = Buffer.from(message.slice(0, 2000), 'utf8');
    const head = allocFrame(this.fixedBytes + 5 + 1 + varintBytes(msg.length) + msg.length);
    const h: FrameHeader = { generation, opSeq, kind: FrameKind.ABORT, op: 0, dtype: 0, srcRank, step: 0, segment: 0, offset: 0, total: 0 };
    // Reuse the data layout for fields 1..11, then fields 12 and 13 (no padding or payload).
    const tmp = Buffer.alloc(this.layout(0).headerBytes);
    this.writeHeader(tmp, h, 0);
    tmp.copy(head, 0, 0, this.fixedBytes);
    let p = this.fixedBytes;
    head[p++] = T_MISSING;
    head.writeInt32LE(missingRank, p);
    p += 4;
    head[p++] = T_MESSAGE;
    p = writeVarint(head, p, msg.length);
    msg.copy(head, p);
    return head;
  }
}

/** Decodes any proto3 encoding of `Frame` (field order and omitted defaults are handled). Throws on malformed input. */
export function decodeFrame(buf: Buffer): DecodedFrame {
  const f: DecodedFrame = {
    jobId: '', generation: 0, opSeq: 0, kind: 0 as FrameKind, op: 0, dtype: 0, srcRank: 0, step: 0, segment: 0,
    offset: 0, total: 0, missingRank: -1, message: '', payload: EMPTY, raw: buf, srcRankPos: -1, stepPos: -1,
  };
  let p = 0;
  const end = buf.length;
  const readVarint = (): number => {
    let result = 0;
    let scale = 1;
    for (;;) {
      if (p >= end) throw new Error('truncated varint');
      const b = buf[p++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
      if (scale > 2 ** 56) throw new Error('varint too long');
    }
  };
  const need = (n: number) => {
    if (p + n > end) throw new Error('truncated field');
  };
  while (p < end) {
    const tag = readVarint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      const v = readVarint();
      if (field === 4) f.kind = v as FrameKind;
      else if (field === 5) f.op = v;
      else if (field === 6) f.dtype = v;
    } else if (wire === 1) {
      need(8);
      const v = buf.readUInt32LE(p) + buf.readUInt32LE(p + 4) * 0x100000000;
      if (field === 2) f.generation = v;
      else if (field === 3) f.opSeq = v;
      else if (field === 10) f.offset = v;
      else if (field === 11) f.total = v;
      p += 8;
    } else if (wire === 5) {
      need(4);
      if (field === 7) {
        f.srcRank = buf.readUInt32LE(p);
        f.srcRankPos = p;
      } else if (field === 8) {
        f.step = buf.readUInt32LE(p);
        f.stepPos = p;
      } else if (field === 9) f.segment = buf.readUInt32LE(p);
      else if (field === 12) f.missingRank = buf.readInt32LE(p);
      p += 4;
    } else if (wire === 2) {
      const n = readVarint();
      need(n);
      if (field === 1) f.jobId = buf.toString('utf8', p, p + n);
      else if (field === 13) f.message = buf.toString('utf8', p, p + n);
      else if (field === 15) f.payload = buf.subarray(p, p + n);
      p += n;
    } else {
      throw new Error(`unsupported wire type ${wire} for field ${field}`);
    }
  }
  return f;
}

const EMPTY = Buffer.alloc(0);

/** Rewrites `step` and `src_rank` of a received frame so that it can be sent on unchanged otherwise. */
export function patchForward(f: DecodedFrame, step: number, srcRank: number): Buffer {
  if (f.stepPos < 0 || f.srcRankPos < 0) throw new Error('frame lacks fixed step/src_rank fields; cannot forward');
  f.raw.writeUInt32LE(step, f.stepPos);
  f.raw.writeUInt32LE(srcRank, f.srcRankPos);
  return f.raw;
}
