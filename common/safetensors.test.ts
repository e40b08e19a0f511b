// safetensors I/O: every dtype round-tripped, F16 and BF16 conversion, truncated or lying files refused with their
// name, the reader of single tensors and the streaming writer.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import {
  SafetensorsReader,
  widenBf16,
  writeSafetensorsStreaming,
  f16ToF32,
  narrowToF16,
  parseSafetensors,
  readSafetensors,
  safetensorsHeader,
  safetensorsNames,
  SafetensorsError,
  serializeSafetensors,
  toFloat32,
  toInt32,
  writeSafetensors,
  type SafeTensor,
} from './safetensors';

function sample(): Map<string, SafeTensor> {
  return new Map<string, SafeTensor>([
    ['a.f32', { dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, -6.5]) }],
    ['b.f16', { dtype: 'F16', shape: [3], data: narrowToF16([1, -2, 0.5]) }],
    ['c.bf16', { dtype: 'BF16', shape: [2], data: Uint16Array.from([0x3f80, 0xc000]) }],
    ['d.i64', { dtype: 'I64', shape: [2], data: BigInt64Array.from([5n, -7n]) }],
    ['e.u8', { dtype: 'U8', shape: [1, 3], data: Uint8Array.from([0, 1, 255]) }],
    ['f.i32', { dtype: 'I32', shape: [], data: Int32Array.from([42]) }],
  ]);
}

/** Build a file from a hand-written header and a data section of `dataBytes` bytes. */
function rawFile(header: unknown, dataBytes: number): Uint8Array {
  const json = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + dataBytes);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

describe('safetensors', () => {
  test('round-trips every dtype through a file, keeping F16 as 16-bit', () => {
    const dir = mkdtempSync(join(tmpdir(), 'st-'));
    const path = join(dir, 'x.safetensors');
    writeSafetensors(path, sample(), { format: 'pt' });
    const back = readSafetensors(path);
    expect(back.metadata).toEqual({ format: 'pt' });
    expect([...back.tensors.keys()]).toEqual([...sample().keys()]);
    for (const [name, t] of sample()) {
      const got = back.tensors.get(name)!;
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual(t.shape);
      expect(got.data.constructor).toBe(t.data.constructor);
      expect(Array.from(got.data as ArrayLike<number>)).toEqual(Array.from(t.data as ArrayLike<number>));
    }
    expect(back.tensors.get('b.f16')!.data).toBeInstanceOf(Uint16Array);
    expect(Array.from(toFloat32(back.tensors.get('b.f16')!))).toEqual([1, -2, 0.5]);
    expect(Array.from(toFloat32(back.tensors.get('c.bf16')!))).toEqual([1, -2]);
    expect(Array.from(toInt32(back.tensors.get('d.i64')!))).toEqual([5, -7]);
    // header padded to a multiple of 8
    const bytes = serializeSafetensors(sample());
    expect(Number(bytes.readBigUInt64LE(0)) % 8).toBe(0);
  });

  test('f16 conversion rounds to nearest even and handles subnormals/inf', () => {
    expect(f16ToF32(narrowToF16([65504])[0]!)).toBe(65504);
    expect(f16ToF32(narrowToF16([1e6])[0]!)).toBe(Infinity);
    expect(f16ToF32(narrowToF16([2 ** -24])[0]!)).toBe(2 ** -24);
    expect(f16ToF32(narrowToF16([1 + 2 ** -11])[0]!)).toBe(1); // tie -> even
    expect(f16ToF32(narrowToF16([1 + 3 * 2 ** -11])[0]!)).toBe(1 + 2 ** -9);
    expect(f16ToF32(narrowToF16([0.1])[0]!)).toBeCloseTo(0.0999755859375, 12);
  });

  const bad: [string, Uint8Array, RegExp][] = [
    ['shorter than the length field', Uint8Array.from([1, 2, 3]), /truncated/],
    ['header longer than the file', (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(100n, 0); return b; })(), /truncated/],
    ['header not JSON', (() => { const b = Buffer.alloc(12); b.writeBigUInt64LE(4n, 0); b.write('{{{{', 8); return b; })(), /not valid UTF-8 JSON/],
    ['unknown dtype', rawFile({ w: { dtype: 'F8', shape: [1], data_offsets: [0, 1] } }, 1), /tensor "w": unknown dtype "F8"/],
    ['size mismatch', rawFile({ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, 12), /tensor "w": 12 bytes .* needs 16/],
    ['offsets beyond data', rawFile({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8), /tensor "w".*beyond the data section/],
    ['overlap', rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /tensor "b".*overlap tensor "a"/],
    ['end before begin', rawFile({ w: { dtype: 'U8', shape: [0], data_offsets: [4, 2] } }, 8), /end before begin/],
    ['bad shape', rawFile({ w: { dtype: 'U8', shape: [-1], data_offsets: [0, 0] } }, 0), /shape \[-1\]/],
  ];
  test.each(bad)('rejects a file whose %s, naming file and tensor', (_what, bytes, re) => {
    expect(() => parseSafetensors(bytes, '/data/w.safetensors')).toThrow(SafetensorsError);
    expect(() => parseSafetensors(bytes, '/data/w.safetensors')).toThrow(/^\/data\/w\.safetensors: /);
    expect(() => parseSafetensors(bytes, '/data/w.safetensors')).toThrow(re);
  });

  test('a truncated real file fails on read and names the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'st-'));
    const path = join(dir, 'cut.safetensors');
    const full = serializeSafetensors(sample());
    writeFileSync(path, full.subarray(0, full.length - 3));
    expect(() => readSafetensors(path)).toThrow(new RegExp(`${path}: tensor ".*beyond the data section`));
  });

  test('the writer refuses data that does not match dtype or shape', () => {
    expect(() => serializeSafetensors({ x: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(/tensor "x": shape \[3\] has 3 elements but data has 2/);
    expect(() => serializeSafetensors({ x: { dtype: 'F16', shape: [2], data: new Float32Array(2) } })).toThrow(/needs a Uint16Array/);
  });
});

test('safetensorsNames and safetensorsHeader read the names and shapes from the header alone, and names a broken file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'blip2-st-names-'));
  try {
    const path = join(dir, 'a.safetensors');
    writeSafetensors(path, new Map([
      ['b.weight', { dtype: 'F32', shape: [2], data: Float32Array.of(1, 2) }],
      ['a.bias', { dtype: 'F16', shape: [1], data: Uint16Array.of(0) }],
    ]), { format: 'pt' });
    expect(safetensorsNames(path).sort()).toEqual(['a.bias', 'b.weight']);
    expect(safetensorsHeader(path).get('b.weight')).toEqual({ dtype: 'F32', shape: [2] });
    writeFileSync(join(dir, 'short'), Buffer.from([1, 2, 3]));
    expect(() => safetensorsNames(join(dir, 'short'))).toThrow(/short: shorter than the 8-byte header length/);
    expect(() => safetensorsNames(join(dir, 'missing'))).toThrow(/missing: cannot read/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('reading some tensors, writing one at a time', () => {
  test('SafetensorsReader checks the whole header against the file size, then reads one tensor; the streaming writer writes what serializeSafetensors does', () => {
    const dir = mkdtempSync(join(tmpdir(), 'st-reader-'));
    try {
      const tensors = new Map<string, SafeTensor>([
        ['a', { dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }],
        ['b', { dtype: 'BF16', shape: [3], data: Uint16Array.from([0x3f80, 0xc000, 0x0001]) }],
        ['c', { dtype: 'F16', shape: [1], data: Uint16Array.from([0x3c00]) }],
      ]);
      const path = join(dir, 'x.safetensors');
      writeSafetensorsStreaming(path, [...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: () => t.data })), { format: 'pt' });
      expect(readFileSync(path).equals(serializeSafetensors(tensors, { format: 'pt' }))).toBe(true);
      const r = SafetensorsReader.open(path);
      expect([...r.entries.keys()]).toEqual(['a', 'b', 'c']);
      expect(r.metadata).toEqual({ format: 'pt' });
      expect(Array.from(r.read('a').data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
      // BF16 widens exactly: its bits are a float32's upper half (0x0001 -> the subnormal 2^-133).
      expect(Array.from(toFloat32(r.read('b')))).toEqual([1, -2, 2 ** -133]);
      expect(Array.from(widenBf16(Uint16Array.from([0x7f80, 0xff80])))).toEqual([Infinity, -Infinity]);
      expect(() => r.read('zzz')).toThrow(/no tensor "zzz"/);
      // Truncated: the header promises more data than the file holds; refused at open, naming the tensor.
      const bytes = readFileSync(path);
      writeFileSync(join(dir, 'cut.safetensors'), bytes.subarray(0, bytes.byteLength - 2));
      expect(() => SafetensorsReader.open(join(dir, 'cut.safetensors'))).toThrow(/cut\.safetensors: tensor "c": data_offsets \[\d+, \d+\] beyond the data section/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
