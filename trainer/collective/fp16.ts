/**
 * IEEE 754 binary16 <-> binary32 conversion for fp16 on the wire. Encoding rounds to nearest, ties to even
 * (as numpy's `astype(float16)` does); values beyond ±65504 become ±Infinity. Decoding is one table lookup.
 *
 * The exported functions use the WebAssembly SIMD kernels (fp16-simd.ts, the same bits, about twice as fast
 * measured on the 2-vCPU Xeon) for arrays of at least `SIMD_MIN_ELEMENTS`, and the JavaScript loops (`...Js`)
 * otherwise or where WebAssembly SIMD is missing.
 */
import { addHalfSimd, floatToHalfSimd, halfToFloatBitsSimd, simdKernels } from './fp16-simd';

/** Shorter arrays are converted by the JavaScript loops (copying through the module costs more than it saves). */
export const SIMD_MIN_ELEMENTS = 256;

/** dst[i] = half(src[i]) for i < src.length. `bits` must be a Uint32Array view of the same memory as `src`. */
export function floatToHalf(bits: Uint32Array, dst: Uint16Array): void {
  const k = bits.length >= SIMD_MIN_ELEMENTS ? simdKernels() : null;
  if (k) floatToHalfSimd(k, bits, dst);
  else floatToHalfJs(bits, dst);
}

/** dst[i] = bits of float(src[i]) for i < n, where `dst` is a Uint32Array view of the float32 output. */
export function halfToFloatBits(src: Uint16Array, dst: Uint32Array, n: number): void {
  const k = n >= SIMD_MIN_ELEMENTS ? simdKernels() : null;
  if (k) halfToFloatBitsSimd(k, src, dst, n);
  else halfToFloatBitsJs(src, dst, n);
}

/** The reduce step of an fp16-wire all-reduce: io[i] = half(fp32(float(io[i]) + acc[i])) for i < n. */
export function addHalfInPlace(io: Uint16Array, acc: Float32Array, n: number): void {
  const k = n >= SIMD_MIN_ELEMENTS ? simdKernels() : null;
  if (k) addHalfSimd(k, io, acc, null, n);
  else addHalfInPlaceJs(io, acc, n);
}

/** As `addHalfInPlace`, and also accBits[i] = bits of float(io[i]); `accBits` is a Uint32Array view of `acc`. */
export function addHalfInPlaceKeep(io: Uint16Array, acc: Float32Array, accBits: Uint32Array, n: number): void {
  const k = n >= SIMD_MIN_ELEMENTS ? simdKernels() : null;
  if (k) addHalfSimd(k, io, acc, accBits, n);
  else addHalfInPlaceKeepJs(io, acc, accBits, n);
}

let halfToFloat: Float32Array | null = null;

/** The 65536-entry decode table (256 KiB), built on first use. */
export function halfTable(): Float32Array {
  if (halfToFloat) return halfToFloat;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = sign * m * 2 ** -24;
    else if (e === 31) t[h] = m ? NaN : sign * Infinity;
    else t[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  halfToFloat = t;
  return t;
}

/** dst[i] = half(src[i]) for i < src.length. `bits` must be a Uint32Array view of the same memory as `src`. */
export function floatToHalfJs(bits: Uint32Array, dst: Uint16Array): void {
  const n = bits.length;
  // Read as int32: V8 keeps those in registers, while uint32 values of 2^31 and above (negative floats) are not
  // small integers (measured 1.4 against 2.4 ns per element).
  const s = new Int32Array(bits.buffer, bits.byteOffset, n);
  for (let i = 0; i < n; i++) dst[i] = halfOfBits(s[i]!);
}

/** The half of the float whose bits (read as int32) are `x`. Small enough for V8 to inline into the loops. */
function halfOfBits(x: number): number {
  const v = x & 0x7fffffff;
  // Fast path, |x| in [2^-14, 65536) (one unsigned range check): re-bias the exponent (127 -> 15) and round the
  // 13 dropped mantissa bits to nearest even in one addition; a carry into the exponent (up to infinity) is the
  // right result.
  return (v - 0x38800000) >>> 0 < 0x0f000000 ? ((x >>> 16) & 0x8000) | ((v - 0x38000000 + 0xfff + ((v >>> 13) & 1)) >>> 13) : halfSlow(x);
}

/** Zero, subnormal halves, overflow to infinity, infinities and NaN. */
function halfSlow(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const e = (x >>> 23) & 0xff;
  const m = x & 0x7fffff;
  if (e >= 143) return sign | (e === 255 && m !== 0 ? 0x7e00 : 0x7c00);
  if (e >= 102) {
    const full = m | 0x800000;
    const shift = 126 - e;
    let h = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h;
  }
  return sign;
}

/**
 * dst[i] = bits of float(src[i]) for i < n, where `dst` is a Uint32Array view of the float32 output: one lookup in
 * the 256 KiB table (it stays in cache; measured 1.1 ns per element against 1.8 for re-biasing by arithmetic).
 */
export function halfToFloatBitsJs(src: Uint16Array, dst: Uint32Array, n: number): void {
  const t = halfBitsTable();
  for (let i = 0; i < n; i++) dst[i] = t[src[i]!]!;
}

let halfBits: Uint32Array | null = null;
function halfBitsTable(): Uint32Array {
  if (!halfBits) halfBits = new Uint32Array(halfTable().buffer);
  return halfBits;
}

/** dst[i] = float(src[i]). */
export function halfToFloatInto(src: Uint16Array, dst: Float32Array): void {
  halfToFloatBits(src, new Uint32Array(dst.buffer, dst.byteOffset, dst.length), Math.min(src.length, dst.length));
}

// One float32 seen as its bits: the fused loops below convert through it element by element.
const oneF32 = new Float32Array(1);
const oneU32 = new Uint32Array(oneF32.buffer);
const oneI32 = new Int32Array(oneF32.buffer);

/**
 * The reduce step of an fp16-wire all-reduce in one pass: io[i] = half(fp32(float(io[i]) + acc[i])) for i < n.
 * The same result as decoding into fp32, adding and encoding in three passes (the sum is rounded to fp32 first).
 */
export function addHalfInPlaceJs(io: Uint16Array, acc: Float32Array, n: number): void {
  const t = halfBitsTable();
  const f = oneF32;
  const u = oneU32;
  const s = oneI32;
  for (let i = 0; i < n; i++) {
    u[0] = t[io[i]!]!;
    f[0] = f[0]! + acc[i]!;
    io[i] = halfOfBits(s[0]!);
  }
}

/**
 * As `addHalfInPlace`, and also accBits[i] = bits of float(io[i]) (the owner of a segment keeps exactly what the
 * other ranks will receive). `accBits` is a Uint32Array view of `acc`.
 */
export function addHalfInPlaceKeepJs(io: Uint16Array, acc: Float32Array, accBits: Uint32Array, n: number): void {
  const t = halfBitsTable();
  const f = oneF32;
  const u = oneU32;
  const s = oneI32;
  for (let i = 0; i < n; i++) {
    u[0] = t[io[i]!]!;
    f[0] = f[0]! + acc[i]!;
    const o = halfOfBits(s[0]!);
    io[i] = o;
    accBits[i] = t[o]!;
  }
}
