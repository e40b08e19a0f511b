/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors, format v0.x):
 * 8-byte little-endian header length N, N bytes of UTF-8 JSON, then raw little-endian data. Each header entry is
 * `{dtype, shape, data_offsets: [begin, end]}` with offsets relative to the data section; `__metadata__` holds
 * string key/values.
 *
 * F16 and BF16 stay 16-bit (`Uint16Array` of raw bits) so that a frozen fp16 backbone is resident at 2 bytes per
 * parameter; `toFloat32()` widens on demand. I64 loads as `BigInt64Array`.
 *
 * Every structural rule is checked before any tensor is handed out, so a bad file never yields a half-loaded
 * result; errors name the file and the tensor.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { Blip2Error } from './errors';

/** A file that is not valid safetensors, or whose contents do not match what the caller needs. Not retried. */
export class SafetensorsError extends Blip2Error {}

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8';

export type SafetensorsData = Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

export interface SafeTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** F32: Float32Array; F16/BF16: Uint16Array of raw bits; I64: BigInt64Array; I32: Int32Array; U8: Uint8Array. */
  data: SafetensorsData;
}

export interface SafetensorsContents {
  /** The file the tensors came from (or `<buffer>`), for error messages. */
  path: string;
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

const BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };

/** Largest header we accept (the reference implementation caps it at 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

export function dtypeBytes(dtype: SafetensorsDtype): number {
  return BYTES[dtype];
}

function isDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === 'string' && Object.hasOwn(BYTES, value);
}

export function numElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function expectedArrayType(dtype: SafetensorsDtype): string {
  return { F32: 'Float32Array', F16: 'Uint16Array', BF16: 'Uint16Array', I64: 'BigInt64Array', I32: 'Int32Array', U8: 'Uint8Array' }[dtype];
}

function view(dtype: SafetensorsDtype, bytes: Uint8Array, fresh = false): SafetensorsData {
  // Copy into a fresh, aligned buffer: offsets inside the file need not be aligned to the element size. `fresh`: the
  // bytes are already a buffer of their own, starting at offset 0.
  const copy = fresh ? bytes : new Uint8Array(bytes.byteLength);
  if (!fresh) copy.set(bytes);
  const buf = copy.buffer;
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf);
    case 'F16':
    case 'BF16':
      return new Uint16Array(buf);
    case 'I64':
      return new BigInt64Array(buf);
    case 'I32':
      return new Int32Array(buf);
    case 'U8':
      return copy;
  }
}

interface HeaderEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * The checked entries of a parsed header: every rule of the format (dtype known, shape of non-negative integers,
 * offsets matching shape × dtype, inside `dataLen`, no overlap). `fail` throws.
 */
function checkHeader(header: unknown, dataLen: number, fail: (msg: string) => never): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header must be a JSON object');
  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`__metadata__["${k}"] must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v as string;
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (typeof raw !== 'object' || raw === null) fail(`${where}: entry must be an object`);
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!isDtype(e.dtype)) fail(`${where}: unknown dtype ${JSON.stringify(e.dtype)} (known: ${Object.keys(BYTES).join(', ')})`);
    const dtype = e.dtype as SafetensorsDtype;
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`${where}: shape ${JSON.stringify(e.shape)} must be an array of non-negative integers`);
    }
    const shape = e.shape as number[];
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      fail(`${where}: data_offsets ${JSON.stringify(offs)} must be two non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}] end before begin`);
    const want = numElements(shape) * BYTES[dtype];
    if (end - begin !== want) {
      fail(`${where}: ${end - begin} bytes at [${begin}, ${end}] but shape ${JSON.stringify(shape)} × ${dtype} needs ${want}`);
    }
    if (end > dataLen) fail(`${where}: data_offsets [${begin}, ${end}] beyond the data section of ${dataLen} bytes (truncated file?)`);
    entries.push({ name, dtype, shape, begin, end });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.begin < prev.end) {
      fail(`tensor "${cur.name}": data_offsets [${cur.begin}, ${cur.end}] overlap tensor "${prev.name}" [${prev.begin}, ${prev.end}]`);
    }
  }
  return { entries, metadata };
}

/** Parse safetensors bytes. `path` only labels error messages. */
export function parseSafetensors(bytes: Uint8Array, path = '<buffer>'): SafetensorsContents {
  const fail = (msg: string): never => {
    throw new SafetensorsError(`${path}: ${msg}`);
  };
  if (bytes.byteLength < 8) fail(`truncated: ${bytes.byteLength} bytes, the 8-byte header length is missing`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLen} exceeds the limit ${MAX_HEADER_BYTES}`);
  const n = Number(headerLen);
  if (8 + n > bytes.byteLength) fail(`truncated: header says ${n} bytes of JSON but the file has ${bytes.byteLength - 8} after the length`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    fail(`header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  const dataStart = 8 + n;
  const { entries, metadata } = checkHeader(header, bytes.byteLength - dataStart, fail);
  const tensors = new Map<string, SafeTensor>();
  for (const e of entries) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: view(e.dtype, bytes.subarray(dataStart + e.begin, dataStart + e.end)) });
  }
  return { path, tensors, metadata };
}

/**
 * A safetensors file opened for reading some of its tensors: the header is read and checked in full (every rule of
 * `parseSafetensors`, against the file's size), then `read(name)` reads that tensor's bytes alone. A multi-GiB shard
 * is never read whole, and a checkpoint whose names or shapes are wrong is refused before any data is read.
 */
export class SafetensorsReader {
  readonly entries: Map<string, { dtype: SafetensorsDtype; shape: number[] }>;
  readonly metadata: Record<string, string>;
  private readonly offsets = new Map<string, { begin: number; end: number }>();

  private constructor(
    readonly path: string,
    entries: HeaderEntry[],
    metadata: Record<string, string>,
    private readonly dataStart: number,
  ) {
    this.entries = new Map(entries.map((e) => [e.name, { dtype: e.dtype, shape: e.shape }]));
    for (const e of entries) this.offsets.set(e.name, { begin: e.begin, end: e.end });
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsReader {
    const fail = (msg: string): never => {
      throw new SafetensorsError(`${path}: ${msg}`);
    };
    const fd = openForReading(path);
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(8);
      if (size < 8 || readSync(fd, head, 0, 8, 0) !== 8) fail(`truncated: ${size} bytes, the 8-byte header length is missing`);
      const headerLen = head.readBigUInt64LE(0);
      if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLen} exceeds the limit ${MAX_HEADER_BYTES}`);
      const n = Number(headerLen);
      if (8 + n > size) fail(`truncated: header says ${n} bytes of JSON but the file has ${size - 8} after the length`);
      const json = Buffer.alloc(n);
      if (readSync(fd, json, 0, n, 8) !== n) fail(`truncated header (${n} bytes announced)`);
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
      } catch (err) {
        fail(`header is not valid UTF-8 JSON (${(err as Error).message})`);
      }
      const { entries, metadata } = checkHeader(header, size - 8 - n, fail);
      return new SafetensorsReader(path, entries, metadata, 8 + n);
    } finally {
      closeSync(fd);
    }
  }

  /** One tensor, its bytes read from the file now. */
  read(name: string): SafeTensor {
    const e = this.entries.get(name);
    const o = this.offsets.get(name);
    if (!e || !o) throw new SafetensorsError(`${this.path}: no tensor "${name}"`);
    const bytes = new Uint8Array(o.end - o.begin);
    const fd = openSync(this.path, 'r');
    try {
      let done = 0;
      while (done < bytes.byteLength) {
        const got = readSync(fd, bytes, done, bytes.byteLength - done, this.dataStart + o.begin + done);
        if (got <= 0) throw new SafetensorsError(`${this.path}: tensor "${name}": the file ended ${bytes.byteLength - done} bytes early`);
        done += got;
      }
    } finally {
      closeSync(fd);
    }
    return { dtype: e.dtype, shape: e.shape, data: view(e.dtype, bytes, true) };
  }
}

/** Read and validate a safetensors file. */
export function readSafetensors(path: string): SafetensorsContents {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new SafetensorsError(`${path}: cannot read (${(err as Error).message})`, { cause: err });
  }
  return parseSafetensors(bytes, path);
}

/** The tensor names of a safetensors file, from its header alone (see `safetensorsHeader`). */
export function safetensorsNames(path: string): string[] {
  return [...safetensorsHeader(path).keys()];
}

/** A file descriptor for reading `path`; a file that cannot be opened is a SafetensorsError naming it. */
function openForReading(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    throw new SafetensorsError(`${path}: cannot read (${(err as Error).message})`, { cause: err });
  }
}

/**
 * Each tensor's dtype and shape, from the file's header alone (a multi-GiB checkpoint is not read to learn what it
 * holds). The data is not checked: `readSafetensors` does that when the tensors are loaded.
 */
export function safetensorsHeader(path: string): Map<string, { dtype: string; shape: number[] }> {
  const fd = openForReading(path);
  try {
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) !== 8) throw new SafetensorsError(`${path}: shorter than the 8-byte header length`);
    const n = Number(head.readBigUInt64LE(0));
    if (n > 100_000_000) throw new SafetensorsError(`${path}: header length ${n} is not plausible`);
    const json = Buffer.alloc(n);
    if (readSync(fd, json, 0, n, 8) !== n) throw new SafetensorsError(`${path}: truncated header (${n} bytes announced)`);
    let header: unknown;
    try {
      header = JSON.parse(json.toString('utf8'));
    } catch (err) {
      throw new SafetensorsError(`${path}: header is not valid JSON (${(err as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new SafetensorsError(`${path}: header is not a JSON object`);
    const out = new Map<string, { dtype: string; shape: number[] }>();
    for (const [k, v] of Object.entries(header as Record<string, { dtype?: unknown; shape?: unknown }>)) {
      if (k === '__metadata__') continue;
      if (typeof v?.dtype !== 'string' || !Array.isArray(v.shape)) throw new SafetensorsError(`${path}: tensor ${k} has no dtype or shape in the header`);
      out.set(k, { dtype: v.dtype, shape: v.shape as number[] });
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Serialise tensors (in the given order) to safetensors bytes. The header is space-padded to a multiple of 8. */
export function serializeSafetensors(
  tensors: Map<string, SafeTensor> | Record<string, SafeTensor>,
  metadata: Record<string, string> = {},
): Buffer {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of list) {
    if (name === '__metadata__') throw new SafetensorsError(`tensor name "__metadata__" is reserved`);
    if (!isDtype(t.dtype)) throw new SafetensorsError(`tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    if (t.data.constructor.name !== expectedArrayType(t.dtype)) {
      throw new SafetensorsError(`tensor "${name}": dtype ${t.dtype} needs a ${expectedArrayType(t.dtype)}, got ${t.data.constructor.name}`);
    }
    if (t.data.length !== numElements(t.shape)) {
      throw new SafetensorsError(`tensor "${name}": shape ${JSON.stringify(t.shape)} has ${numElements(t.shape)} elements but data has ${t.data.length}`);
    }
    const bytes = t.data.byteLength;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  const jsonBytes = Buffer.byteLength(json, 'utf8');
  json += ' '.repeat((8 - (jsonBytes % 8)) % 8);
  const headerBuf = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBuf.byteLength + offset);
  out.writeBigUInt64LE(BigInt(headerBuf.byteLength), 0);
  headerBuf.copy(out, 8);
  let pos = 8 + headerBuf.byteLength;
  for (const [, t] of list) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}

export function writeSafetensors(
  path: string,
  tensors: Map<string, SafeTensor> | Record<string, SafeTensor>,
  metadata: Record<string, string> = {},
): void {
  writeFileSync(path, serializeSafetensors(tensors, metadata));
}

/** A tensor to write whose data is made only when its turn comes (`writeSafetensorsStreaming`). */
export interface LazyTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  data: () => SafetensorsData;
}

/**
 * Write a safetensors file tensor by tensor: the header from the names, dtypes and shapes, then each tensor's data,
 * made by its `data()` only then, so that no more than one tensor's bytes are held at a time.
 */
export function writeSafetensorsStreaming(path: string, list: readonly LazyTensor[], metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of list) {
    if (t.name === '__metadata__') throw new SafetensorsError(`tensor name "__metadata__" is reserved`);
    if (!isDtype(t.dtype)) throw new SafetensorsError(`tensor "${t.name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    const bytes = numElements(t.shape) * BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json, 'utf8') % 8)) % 8);
  const headerBuf = Buffer.from(json, 'utf8');
  const fd = openSync(path, 'w');
  try {
    const writeAll = (b: Uint8Array) => {
      let off = 0;
      while (off < b.byteLength) off += writeSync(fd, b, off, b.byteLength - off);
    };
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerBuf.byteLength), 0);
    writeAll(len);
    writeAll(headerBuf);
    for (const t of list) {
      const data = t.data();
      if (data.constructor.name !== expectedArrayType(t.dtype)) {
        throw new SafetensorsError(`tensor "${t.name}": dtype ${t.dtype} needs a ${expectedArrayType(t.dtype)}, got ${data.constructor.name}`);
      }
      if (data.length !== numElements(t.shape)) {
        throw new SafetensorsError(`tensor "${t.name}": shape ${JSON.stringify(t.shape)} has ${numElements(t.shape)} elements but data has ${data.length}`);
      }
      writeAll(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
  } finally {
    closeSync(fd);
  }
}

/** IEEE half (raw bits) -> float32. */
export function f16ToF32(bits: number): number {
  const s = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float -> IEEE half bits, round to nearest even (as numpy/torch `.half()`). */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

// A 64k-entry lookup table makes widening a 1-billion-parameter backbone block-by-block cheap.
let f16Table: Float32Array | undefined;
function table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

/** Widen F16 raw bits to float32 (into `out` when given). */
export function widenF16(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  const t = table();
  for (let i = 0; i < bits.length; i++) out[i] = t[bits[i]!]!;
  return out;
}

/** Narrow float32 to F16 raw bits (round to nearest even). */
export function narrowToF16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i]!);
  return out;
}

/** Float values of a floating tensor as float32 (F16/BF16 widened; F32 returned as is). */
export function toFloat32(t: SafeTensor, name = '<tensor>'): Float32Array {
  switch (t.dtype) {
    case 'F32':
      return t.data as Float32Array;
    case 'F16':
      return widenF16(t.data as Uint16Array);
    case 'BF16':
      return widenBf16(t.data as Uint16Array);
    default:
      throw new SafetensorsError(`tensor "${name}": dtype ${t.dtype} is not floating point`);
  }
}

/** BF16 raw bits -> float32, exactly (a bfloat16 is the upper half of a float32). */
export function widenBf16(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  return out;
}

/** Integer values of an I64/I32/U8 tensor as int32 (I64 values must fit). */
export function toInt32(t: SafeTensor, name = '<tensor>'): Int32Array {
  switch (t.dtype) {
    case 'I32':
      return t.data as Int32Array;
    case 'U8':
      return Int32Array.from(t.data as Uint8Array);
    case 'I64': {
      const src = t.data as BigInt64Array;
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i]!;
        if (v > 2147483647n || v < -2147483648n) throw new SafetensorsError(`tensor "${name}": value ${v} does not fit int32`);
        out[i] = Number(v);
      }
      return out;
    }
    default:
      throw new SafetensorsError(`tensor "${name}": dtype ${t.dtype} is not an integer type`);
  }
}
