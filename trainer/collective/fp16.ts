/**
 * IEEE 754 binary16 <-> binary32 conversion for fp16 on the wire. Encoding rounds to nearest, ties to even
 * (as numpy's `astype(float16)` does); values beyond ±65504 become ±Infinity. Decoding is one table lookup.
 */

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
export function floatToHalf(bits: Uint32Array, dst: Uint16Array): void {
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    const sign = (x >>> 16) & 0x8000;
    const e = (x >>> 23) & 0xff;
    const m = x & 0x7fffff;
    let h: number;
    if (e >= 113) {
      if (e >= 143) {
        h = e === 255 && m !== 0 ? 0x7e00 : 0x7c00;
      } else {
        h = ((e - 112) << 10) | (m >>> 13);
        const rem = m & 0x1fff;
        if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // a carry into the exponent is still right
      }
    } else if (e >= 102) {
      const full = m | 0x800000;
      const shift = 126 - e;
      h = full >>> shift;
      const rem = full & ((1 << shift) - 1);
      const halfway = 1 << (shift - 1);
      if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    } else {
      h = 0;
    }
    dst[i] = sign | h;
  }
}

/** dst[i] = float(src[i]). */
export function halfToFloatInto(src: Uint16Array, dst: Float32Array): void {
  const t = halfTable();
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = t[src[i]!]!;
}
