// The native addon: its loader (a missing or stale build is reported, not thrown), sgemm and the fused kernels' checks.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect, test } from 'vitest';
import { widenF16 } from '../../common';
import { loadNativeBlas, NATIVE_BLAS_PATH } from './native-blas';

test('a missing addon is reported, not thrown, so the engine falls back to XNNPACK', () => {
  const { blas, reason } = loadNativeBlas(1, path.join(os.tmpdir(), 'no-such-dir', 'blas.node'));
  expect(blas).toBeUndefined();
  expect(reason).toMatch(/no-such-dir.*not built/);
});

test('an addon that does not load is reported, not thrown', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blas-test-'));
  const bad = path.join(dir, 'blas.node');
  fs.writeFileSync(bad, 'not a shared object');
  const { blas, reason } = loadNativeBlas(1, bad);
  expect(blas).toBeUndefined();
  expect(reason).toMatch(/failed to load/);
  fs.rmSync(dir, { recursive: true });
});

// test/setup/install.sh builds the addon; where it could not (no OpenBLAS), the checks below do not apply.
test.runIf(fs.existsSync(NATIVE_BLAS_PATH))('the built addon computes batched, transposed, broadcast sgemm', () => {
  const { blas, reason } = loadNativeBlas(2);
  expect(reason).toBeUndefined();
  expect(blas!.getThreads()).toBe(2);
  const shared = new Float32Array(new SharedArrayBuffer(4 * 64)); // the wasm heap is a shared buffer
  const a = shared.subarray(0, 12); // 2 batches of [2×3], stored transposed: [3×2]
  const b = shared.subarray(12, 18); // one [3×2] matrix, repeated (stride 0)
  const out = shared.subarray(18, 26); // 2 × [2×2]
  a.set([1, 4, 2, 5, 3, 6, 0, 1, 1, 0, 2, 2]);
  b.set([1, 0, 0, 1, 1, 1]);
  blas!.sgemm(a, b, out, 2, 2, 3, true, false, 2, 6, 0);
  // batch 0: A = [[1,2,3],[4,5,6]] → A·B = [[4,5],[10,11]]; batch 1: A = [[0,1,2],[1,0,2]] → [[2,3],[3,2]]
  expect(Array.from(out)).toEqual([4, 5, 10, 11, 2, 3, 3, 2]);
  expect(() => blas!.sgemm(a, b, out, 2, 2, 3, true, false, 3, 6, 0)).toThrow(/exceed/);
  expect(() => blas!.sgemm(a, [] as unknown as Float32Array, out, 2, 2, 3, true, false, 1, 0, 0)).toThrow(/Float32Array/);
});

test.runIf(fs.existsSync(NATIVE_BLAS_PATH))('the fused kernels: erf and exp accurate to float, bad sizes refused', () => {
  const { blas } = loadNativeBlas(2);
  const n = 200_001;
  const x = new Float32Array(n).map((_, i) => -87 + (175 * i) / (n - 1)); // exp's whole finite range, erf's too
  const ours = new Float32Array(n);
  const libm = new Float32Array(n); // glibc in double precision, rounded to float
  blas!.approx(0, x, ours, n);
  blas!.approx(2, x, libm, n);
  // Bounds from the arithmetic (ulp(1) = 2^-23; the reference is rounded to float: half an ulp of its value):
  //  - erf, absolute (|erf| ≤ 1): the rational approximation's own error (< 2e-7 ≈ 1.7 ulp(1), Eigen's figure), its
  //    float evaluation (Horner steps and a division on terms below 1: ≤ 1.5 ulp(1) more) and the reference's
  //    rounding (0.5 ulp(1)): 4 ulp(1). Measured: 2 ulp(1) on Intel and AMD x86-64.
  //  - exp, relative: Cephes expf's < 2 ulp (ulp ≤ 2^-23 relative) plus the reference's 0.5 ulp: 2.5·2^-23.
  const ulp1 = 2 ** -23;
  let erfErr = 0;
  for (let i = 0; i < n; i++) erfErr = Math.max(erfErr, Math.abs(ours[i]! - libm[i]!));
  expect(erfErr / ulp1).toBeLessThanOrEqual(4);
  blas!.approx(1, x, ours, n);
  blas!.approx(3, x, libm, n);
  let expErr = 0;
  for (let i = 0; i < n; i++) if (libm[i]! > 1e-37) expErr = Math.max(expErr, Math.abs(ours[i]! - libm[i]!) / libm[i]!);
  expect(expErr / ulp1).toBeLessThanOrEqual(2.5);
  // below -87: 0, not a denormal
  const low = new Float32Array([-87.5, -100, -1e4, -Infinity]);
  const lowOut = new Float32Array(4).fill(1);
  blas!.approx(1, low, lowOut, 4);
  expect(Array.from(lowOut)).toEqual([0, 0, 0, 0]);
  blas!.approx(1, new Float32Array([NaN]), lowOut, 1);
  expect(lowOut[0]).toBeNaN(); // a diverged logit stays visible
  // GELU at a few points against 0.5·x·(1 + erf(x/√2)) from libm
  const g = new Float32Array([-9, -3, -0.5, 0, 0.5, 3, 9]);
  const y = new Float32Array(g.length);
  blas!.geluForward(g, y, g.length);
  const e = new Float32Array(g.length);
  blas!.approx(2, g.map((v) => v * Math.SQRT1_2), e, g.length);
  // y = 0.5·x·(1 + erf(x/√2)): the two erfs differ by ≤ 4 ulp(1) (above) plus the effect of rounding x/√2 to float
  // on the kernel's side (|d erf/dz| ≤ 2/√π, times half an ulp of z ≤ 2^-24·|z|), scaled by 0.5·|x|; then the kernel
  // rounds 1 + erf, the two products and the result (≤ 4 ulp of |y| ≤ |x|, i.e. 4·2^-23·|x|).
  g.forEach((v, i) => {
    const z = Math.abs(v) * Math.SQRT1_2;
    const bound = 0.5 * Math.abs(v) * (4 * ulp1 + (2 / Math.sqrt(Math.PI)) * z * 2 ** -24) + 4 * ulp1 * Math.abs(v);
    expect(Math.abs(y[i]! - 0.5 * v * (1 + e[i]!)), `GELU(${v})`).toBeLessThanOrEqual(bound);
  });
  expect(() => blas!.geluForward(g, y, g.length + 1)).toThrow(/at least 8 elements/);
  expect(() => blas!.crossEntropyForward(new Float32Array(6), new Int32Array([0, 3]), new Float32Array(0), new Float32Array(2), 2, 3, 0)).toThrow(/target class is out of range/);
});

test.runIf(fs.existsSync(NATIVE_BLAS_PATH))('widenF16 gives every half\'s exact float32 value, as the JS table does (NaNs as NaN)', () => {
  const { blas } = loadNativeBlas(2);
  // Every bit pattern, twice over at an odd offset and length (the F16C blocks of 8 and the scalar tail).
  const all = Uint16Array.from({ length: 2 * 65536 + 5 }, (_, i) => (i * 40503 + 7) & 0xffff);
  const ours = new Float32Array(all.length);
  blas!.widenF16(all.subarray(3), ours.subarray(3), all.length - 3);
  const want = widenF16(all);
  const bits = new Uint32Array(ours.buffer);
  const wantBits = new Uint32Array(want.buffer);
  let bad = 0;
  for (let i = 3; i < all.length; i++) {
    if (Number.isNaN(want[i]!)) {
      if (!Number.isNaN(ours[i]!)) bad++;
    } else if (bits[i] !== wantBits[i]) bad++;
  }
  expect(bad).toBe(0);
  expect(Array.from(ours.subarray(0, 3))).toEqual([0, 0, 0]); // nothing written before the offset
  // The scalar path alone (calls of 7 elements: no block of 8), over every pattern, subnormals included.
  const every = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const scalar = new Float32Array(65536);
  for (let i = 0; i < 65536; i += 7) blas!.widenF16(every.subarray(i, i + 7), scalar.subarray(i, i + 7), Math.min(7, 65536 - i));
  const table = widenF16(every);
  const scalarBits = new Uint32Array(scalar.buffer);
  const tableBits = new Uint32Array(table.buffer);
  expect(every.filter((_, i) => (Number.isNaN(table[i]!) ? !Number.isNaN(scalar[i]!) : scalarBits[i] !== tableBits[i])).length).toBe(0);
  expect(() => blas!.widenF16(new Uint16Array(4), new Float32Array(8), 8)).toThrow(/widenF16's src/);
});
