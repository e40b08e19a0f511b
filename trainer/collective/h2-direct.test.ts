// Direct HTTP/2 framing under grpc-js: message assembly, the receive-buffer pool, the gRPC length prefix.
import { describe, expect, it } from 'vitest';
import { allocFrame, GRPC_PREFIX_BYTES } from './frame';
import { FramePool, MessageAssembler, withGrpcPrefix } from './h2-direct';

/** gRPC's framing of `messages`, as one byte stream. */
function grpcStream(messages: Buffer[]): Buffer {
  return Buffer.concat(
    messages.map((m) => {
      const f = allocFrame(m.length);
      m.copy(f);
      return withGrpcPrefix(f);
    }),
  );
}

const message = (length: number, seed: number) => {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};

describe('MessageAssembler', () => {
  const messages = [message(100_000, 1), message(0, 2), message(3, 3), message(70_000, 4), message(1, 5)];
  const stream = grpcStream(messages);

  it.each([1, 4, 5, 6, 7, 16384, 65536, stream.length])('splits a byte stream cut every %i bytes into the messages', (cut) => {
    const got: Buffer[] = [];
    const failures: string[] = [];
    const asm = new MessageAssembler(200_000, new FramePool(200_000, 4), (m) => got.push(Buffer.from(m)), (r) => failures.push(r));
    for (let p = 0; p < stream.length; p += cut) asm.write(stream.subarray(p, p + cut));
    expect(failures).toEqual([]);
    expect(got.map((m) => m.length)).toEqual(messages.map((m) => m.length));
    got.forEach((m, i) => expect(m.equals(messages[i]!)).toBe(true));
  });

  it('delivers each message at byte 5 of its own buffer, pooled when large', () => {
    const got: Buffer[] = [];
    const asm = new MessageAssembler(200_000, new FramePool(200_000, 4), (m) => got.push(m), () => {});
    asm.write(stream);
    for (const m of got) expect(m.byteOffset).toBe(GRPC_PREFIX_BYTES);
    expect(got[0]!.buffer.byteLength).toBe(GRPC_PREFIX_BYTES + 200_000);
    expect(got[2]!.buffer.byteLength).toBe(GRPC_PREFIX_BYTES + 3);
  });

  it('refuses a message over the limit and a compressed one, and reads nothing after', () => {
    for (const [bytes, want] of [
      [grpcStream([message(1001, 1), message(5, 2)]), /1001 bytes, larger than maxMessageBytes 1000/],
      [Buffer.concat([Buffer.from([1, 0, 0, 0, 2, 9, 9]), grpcStream([message(5, 2)])]), /compressed/],
    ] as const) {
      const got: Buffer[] = [];
      const failures: string[] = [];
      const asm = new MessageAssembler(1000, new FramePool(1000, 4), (m) => got.push(m), (r) => failures.push(r));
      asm.write(bytes);
      asm.write(grpcStream([message(5, 3)]));
      expect(got).toEqual([]);
      expect(failures).toHaveLength(1);
      expect(failures[0]).toMatch(want);
    }
  });
});

describe('FramePool', () => {
  it('reuses a recycled buffer once, and ignores buffers it did not make', () => {
    const pool = new FramePool(100_000, 2);
    const a = pool.take(80_000);
    pool.recycle(a);
    pool.recycle(a); // twice: still one entry
    pool.recycle(Buffer.alloc(80_000)); // not from the pool
    const b = pool.take(90_000);
    const c = pool.take(90_000);
    expect(b.buffer).toBe(a.buffer);
    expect(c.buffer).not.toBe(a.buffer);
    expect(pool.take(10).buffer.byteLength).toBe(GRPC_PREFIX_BYTES + 10); // small: not pooled
  });
});

describe('withGrpcPrefix', () => {
  it('writes the prefix into the headroom of a frame without copying it', () => {
    const frame = allocFrame(12);
    frame.fill(7);
    const out = withGrpcPrefix(frame);
    expect(out.buffer).toBe(frame.buffer);
    expect([...out.subarray(0, 5)]).toEqual([0, 0, 0, 0, 12]);
    expect(out.subarray(5).equals(frame)).toBe(true);
  });

  it('copies a buffer without headroom', () => {
    const frame = Buffer.from(new ArrayBuffer(3)).fill(9);
    const out = withGrpcPrefix(frame);
    expect(out.buffer).not.toBe(frame.buffer);
    expect([...out]).toEqual([0, 0, 0, 0, 3, 9, 9, 9]);
  });
});
