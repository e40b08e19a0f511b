// The collective's wire frames (protobuf Frame of proto/collective.proto) and the fused fp16 reduce step, JavaScript and WebAssembly SIMD.
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import {
  addHalfInPlace, addHalfInPlaceJs, addHalfInPlaceKeep, addHalfInPlaceKeepJs, floatToHalf, floatToHalfJs, halfTable, halfToFloatBits,
  halfToFloatBitsJs,
} from './fp16';
import { simdKernels } from './fp16-simd';
import { decodeFrame, DType, FrameEncoder, FrameKind, OpKind, patchForward, type FrameHeader } from './frame';
import { resolveCollectiveGroupOptions } from './group';

const protoPath = fileURLToPath(new URL('../../proto/collective.proto', import.meta.url));

const header: FrameHeader = {
  generation: 2 ** 40 + 3, opSeq: 77, kind: FrameKind.DATA, op: OpKind.ALL_REDUCE, dtype: DType.FLOAT32,
  srcRank: 3, step: 5, segment: 2, offset: 123_456, total: 2 ** 33 + 9,
};

describe('frame encoding', () => {
  it('is the protobuf encoding of blip2.collective.v1.Frame, both ways', async () => {
    const root = await protobuf.load(protoPath);
    const Frame = root.lookupType('blip2.collective.v1.Frame');
    const enc = new FrameEncoder('job-é');
    const payload = new Float32Array([1.5, -2, 3.25]);
    const { frame, payloadOffset } = enc.allocate(header, payload.byteLength);
    new Float32Array(frame.buffer, frame.byteOffset + payloadOffset, 3).set(payload);
    // Aligned for typed-array views on the sender, and at a multiple of 8 after grpc-js's 5-byte prefix.
    expect((frame.byteOffset + payloadOffset) % 8).toBe(0);
    expect((payloadOffset + 5) % 8).toBe(0);
    const m = Frame.toObject(Frame.decode(frame), { longs: Number, enums: Number, bytes: Buffer }) as Record<string, unknown>;
    expect(m).toMatchObject({
      jobId: 'job-é', generation: header.generation, opSeq: 77, kind: FrameKind.DATA, op: OpKind.ALL_REDUCE, dtype: DType.FLOAT32,
      srcRank: 3, step: 5, segment: 2, offset: 123_456, total: header.total,
    });
    expect(Buffer.compare(m.payload as Buffer, Buffer.from(payload.buffer))).toBe(0);

    // protobufjs's encoding (other field order, defaults omitted) decodes with ours.
    const theirs = Buffer.from(Frame.encode(Frame.fromObject({ jobId: 'j', opSeq: 5, kind: FrameKind.ABORT, missingRank: -1, message: 'rank 2 lost' })).finish());
    const d = decodeFrame(theirs);
    expect(d).toMatchObject({ jobId: 'j', opSeq: 5, kind: FrameKind.ABORT, missingRank: -1, message: 'rank 2 lost', generation: 0 });
    // Our ABORT frames decode with protobufjs.
    const abort = Frame.toObject(Frame.decode(enc.abort(4, 9, 1, 3, 'gone')), { longs: Number, enums: Number }) as Record<string, unknown>;
    expect(abort).toMatchObject({ generation: 4, opSeq: 9, kind: FrameKind.ABORT, srcRank: 1, missingRank: 3, message: 'gone' });
  });

  it('forwards a received frame by patching step and src_rank in place', () => {
    const enc = new FrameEncoder('j');
    const { frame } = enc.allocate(header, 8);
    const d = decodeFrame(Buffer.from(frame));
    const fwd = decodeFrame(patchForward(d, 6, 0));
    expect(fwd).toMatchObject({ ...header, step: 6, srcRank: 0 });
    expect(fwd.payload.length).toBe(8);
  });

  it('rejects malformed input', () => {
    expect(() => decodeFrame(Buffer.from([0x0a, 0x05, 0x61]))).toThrow(/truncated/);
    expect(() => decodeFrame(Buffer.from([0x0b]))).toThrow(/wire type 3/);
  });
});

const isNaNHalf = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;

describe('fused fp16 reduce step, JavaScript and WebAssembly SIMD', () => {
  it('equals decode, fp32 add and encode done in separate passes, specials included', () => {
    expect(simdKernels()).not.toBeNull(); // Node 20 has WebAssembly SIMD: the fast path is what runs
    const n = 20_003; // not a multiple of 8: the element-by-element tail runs too
    const acc = new Float32Array(n);
    let x = 12345;
    const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const special = [0, -0, 65504, -65504, 65519, 65520, 1e-8, 6e-5, -6.1e-5, 70000, Infinity, -Infinity, NaN, 2 ** -24, 2 ** -25, 2 ** -14];
    const wire = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      // Mostly normal halves (the vector path), every 50th anything (subnormal, infinite, NaN: the fallback).
      const h = Math.floor(rnd() * 65536);
      wire[i] = i % 50 === 0 ? h : (h & 0x83ff) | ((1 + Math.floor(rnd() * 29)) << 10);
      acc[i] = i % 40 < special.length ? special[i % 40]! : (rnd() - 0.5) * 10 ** Math.floor(rnd() * 12 - 6);
    }
    // The separate passes, as before fusing, by the JavaScript loops.
    const sum = new Float32Array(n);
    halfToFloatBitsJs(wire, new Uint32Array(sum.buffer), n);
    for (let i = 0; i < n; i++) sum[i] = sum[i]! + acc[i]!;
    const want = new Uint16Array(n);
    floatToHalfJs(new Uint32Array(sum.buffer), want);
    const wantAcc = new Uint32Array(n);
    halfToFloatBitsJs(want, wantAcc, n);
    // Same bits, except which NaN an addition produced (every NaN encodes to a NaN half).
    const same = (got: Uint16Array) => {
      let nan = 0;
      for (let i = 0; i < n; i++) {
        if (isNaNHalf(want[i]!)) {
          expect(isNaNHalf(got[i]!)).toBe(true);
          nan++;
        } else if (got[i] !== want[i]) {
          expect([i, got[i]]).toEqual([i, want[i]]);
        }
      }
      expect(nan).toBeGreaterThan(0);
    };
    for (const [name, add, keep] of [
      ['js', addHalfInPlaceJs, addHalfInPlaceKeepJs],
      ['simd', addHalfInPlace, addHalfInPlaceKeep],
    ] as const) {
      const io = wire.slice();
      add(io, acc.slice(), n);
      same(io);
      const io2 = wire.slice();
      const acc2 = acc.slice();
      keep(io2, acc2, new Uint32Array(acc2.buffer), n);
      same(io2);
      const got = new Uint32Array(acc2.buffer);
      for (let i = 0; i < n; i++) if (!isNaNHalf(want[i]!) && got[i] !== wantAcc[i]) expect([name, i, got[i]]).toEqual([name, i, wantAcc[i]]);
    }
  });

  it('SIMD encode and decode give the JavaScript bits for every half and for floats of every exponent', () => {
    const all = new Uint16Array(65536 + 5);
    for (let h = 0; h < all.length; h++) all[h] = h & 0xffff;
    const a = new Uint32Array(all.length);
    const b = new Uint32Array(all.length);
    halfToFloatBitsJs(all, a, all.length);
    halfToFloatBits(all, b, all.length);
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    const n = 200_001;
    const bits = new Uint32Array(n);
    let x = 99;
    for (let i = 0; i < n; i++) bits[i] = x = (Math.imul(x, 1664525) + 1013904223) >>> 0; // every exponent, NaNs too
    for (let i = 0; i < n; i += 3) bits[i] = (bits[i]! & 0x80ffffff) | ((100 + (i % 50)) << 23); // many near the fp16 range
    const h1 = new Uint16Array(n);
    const h2 = new Uint16Array(n);
    floatToHalfJs(bits, h1);
    floatToHalf(bits, h2);
    expect(Buffer.from(h2.buffer).equals(Buffer.from(h1.buffer))).toBe(true);
  });
});

describe('fp16 conversion', () => {
  const roundTrip = (xs: number[]) => {
    const f = new Float32Array(xs);
    const h = new Uint16Array(xs.length);
    floatToHalf(new Uint32Array(f.buffer), h);
    return { bits: Array.from(h), back: Array.from(h, (v) => halfTable()[v]!) };
  };
  it('encodes like IEEE binary16 with round-to-nearest-even', () => {
    const { bits, back } = roundTrip([0, -0, 1, -2, 65504, 65520, 1e6, -Infinity, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -14, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 0.1]);
    expect(bits.slice(0, 5)).toEqual([0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff]);
    expect(bits[5]).toBe(0x7c00); // 65520 rounds up to infinity
    expect(bits[6]).toBe(0x7c00);
    expect(bits[7]).toBe(0xfc00);
    expect(bits[8]).toBe(0x0001); // smallest subnormal
    expect(bits[9]).toBe(0x0000); // a tie rounds to even (0)
    expect(bits[10]).toBe(0x0002); // 1.5 ulp ties to even (2)
    expect(bits[11]).toBe(0x0400); // smallest normal
    expect(bits[12]).toBe(0x3c00); // 1 + half an ulp ties to even (1)
    expect(bits[13]).toBe(0x3c02);
    expect(back[14]).toBeCloseTo(0.0999755859375, 12);
    const { bits: nan } = roundTrip([NaN]);
    expect(nan[0]! & 0x7c00).toBe(0x7c00);
    expect(nan[0]! & 0x3ff).not.toBe(0);
  });
  it('round-trips every finite half exactly', () => {
    const t = halfTable();
    const f = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f[h] = t[h]!;
    const out = new Uint16Array(65536);
    floatToHalf(new Uint32Array(f.buffer), out);
    for (let h = 0; h < 65536; h++) {
      const e = (h >> 10) & 0x1f;
      if (e === 31 && (h & 0x3ff) !== 0) continue; // NaNs need not keep their payload
      if (out[h] !== h) throw new Error(`half 0x${h.toString(16)} came back as 0x${out[h]!.toString(16)}`);
    }
  });
});

describe('collective options', () => {
  it('fills defaults and names a bad value and its rule', () => {
    const o = resolveCollectiveGroupOptions({ jobId: 'j', token: 't' });
    expect(o).toMatchObject({ timeoutMs: 30_000, bucketCapBytes: 64 * 2 ** 20, chunkBytes: 2 ** 20, fp16Wire: false, listen: { host: '0.0.0.0', port: 0 } });
    expect(o.maxMessageBytes).toBeGreaterThan(o.chunkBytes);
    expect(() => resolveCollectiveGroupOptions({ jobId: 'j', token: 't', timeoutMs: -5 })).toThrow(/timeoutMs must be an integer ≥ 1; got -5/);
    expect(() => resolveCollectiveGroupOptions({ jobId: 'j', token: 't', chunkBytes: 1002 })).toThrow(/chunkBytes must be a multiple of 4; got 1002/);
    expect(() => resolveCollectiveGroupOptions({ jobId: 'j', token: 't', chunkBytes: 2 ** 20, maxMessageBytes: 2 ** 20 })).toThrow(/maxMessageBytes/);
    expect(() => resolveCollectiveGroupOptions({ jobId: '', token: 't' })).toThrow(/jobId/);
    expect(() => resolveCollectiveGroupOptions({ jobId: 'j', token: '' })).toThrow(/token/);
  });
});

describe('bucket planning', () => {
  it('packs in order, never splits a tensor below the cap, cuts large ones into whole-cap pieces', async () => {
    const { planBuckets } = await import('./group');
    expect(planBuckets([], 10)).toEqual([]);
    expect(planBuckets([0, 0], 10)).toEqual([]);
    expect(planBuckets([3, 4, 5], 10)).toEqual([
      [{ tensor: 0, from: 0, count: 3 }, { tensor: 1, from: 0, count: 4 }],
      [{ tensor: 2, from: 0, count: 5 }],
    ]);
    expect(planBuckets([2, 25, 1], 10)).toEqual([
      [{ tensor: 0, from: 0, count: 2 }],
      [{ tensor: 1, from: 0, count: 10 }],
      [{ tensor: 1, from: 10, count: 10 }],
      [{ tensor: 1, from: 20, count: 5 }, { tensor: 2, from: 0, count: 1 }],
    ]);
    expect(planBuckets([10], 10)).toEqual([[{ tensor: 0, from: 0, count: 10 }]]);
    // Every element is covered exactly once and no bucket exceeds the cap.
    const lengths = [7, 0, 31, 1, 9, 10, 11, 3];
    const plan = planBuckets(lengths, 10);
    const seen = lengths.map((n) => new Array<number>(n).fill(0));
    for (const b of plan) {
      expect(b.reduce((n, p) => n + p.count, 0)).toBeLessThanOrEqual(10);
      for (const p of b) for (let i = p.from; i < p.from + p.count; i++) seen[p.tensor]![i]!++;
    }
    expect(seen.every((s) => s.every((c) => c === 1))).toBe(true);
  });
});
