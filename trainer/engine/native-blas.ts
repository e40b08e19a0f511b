/**
 * The optional native addon: N-API functions calling Debian's OpenBLAS `cblas_sgemm` (native/blas.cc) and fused kernels (native/kernels.cc),
 * built by native/build.sh (run by test/setup/install.sh). It works on Float32Array views of the wasm heap, so the
 * wasm backend's MatMul can hand it the tensors' memory without a copy. When the addon is not built or does not
 * load, `loadNativeBlas` returns undefined and the engine keeps the XNNPACK matmul.
 * Measured here (2-vCPU Xeon, AVX-512): OpenBLAS 180–350 GFLOP/s against 33–65 for wasm XNNPACK.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeBlas {
  /**
   * For i < batch: out[i] (m×n) = op(a[i·strideA]) · op(b[i·strideB]), op = transpose when asked; a stride of 0
   * repeats one matrix for every i. All three are Float32Arrays (shared buffers included).
   */
  sgemm(
    a: Float32Array,
    b: Float32Array,
    out: Float32Array,
    m: number,
    n: number,
    k: number,
    transposeA: boolean,
    transposeB: boolean,
    batch: number,
    strideA: number,
    strideB: number,
    /** 0 (default): out is written; 1: the product is added to what out holds. */
    beta?: number,
  ): void;
  /**
   * For o < outer, i < inner: C(o,i) = alpha·op(A(o,i))·op(B(o,i)), X(o,i) starting at element o·xOuter + i·xInner
   * with rows ldx apart: attention per (batch, head) on [B, S, H] tensors without splitting heads.
   */
  sgemmHeads(
    a: Float32Array, b: Float32Array, c: Float32Array,
    outer: number, inner: number, m: number, n: number, k: number,
    transposeA: boolean, transposeB: boolean, alpha: number,
    lda: number, ldb: number, ldc: number,
    aOuter: number, aInner: number, bOuter: number, bInner: number, cOuter: number, cInner: number,
  ): void;
  setThreads(threads: number): void;
  getThreads(): number;
  // Fused element-wise kernels (native/kernels.cc); sizes in elements, arrays at least that long.
  geluForward(x: Float32Array, y: Float32Array, n: number): void;
  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array, n: number): void;
  layerNormForward(x: Float32Array, gamma: Float32Array, beta: Float32Array, y: Float32Array, xhat: Float32Array, rstd: Float32Array, rows: number, cols: number, eps: number): void;
  layerNormBackward(dy: Float32Array, xhat: Float32Array, rstd: Float32Array, gamma: Float32Array, dx: Float32Array, dgamma: Float32Array, dbeta: Float32Array, rows: number, cols: number): void;
  softmaxForward(x: Float32Array, y: Float32Array, rows: number, cols: number): void;
  softmaxBackward(y: Float32Array, dy: Float32Array, dx: Float32Array, rows: number, cols: number): void;
  /** `weights`: an empty array when every row counts 1. */
  crossEntropyForward(logits: Float32Array, targets: Int32Array, weights: Float32Array, loss: Float32Array, rows: number, cols: number, smoothing: number): void;
  crossEntropyBackward(logits: Float32Array, targets: Int32Array, weights: Float32Array, dloss: Float32Array, dlogits: Float32Array, rows: number, cols: number, smoothing: number): void;
  /** out[r·cols + c] = a[r·cols + c] + b[c] (rows = 1: a same-shape sum). */
  addRows(a: Float32Array, b: Float32Array, out: Float32Array, rows: number, cols: number): void;
  /** out[i] = x[indices[i]] for rows of `cols`; an index outside [0, rows) throws. */
  gatherRows(x: Float32Array, indices: Int32Array, out: Float32Array, rows: number, cols: number): void;
  /** out = 0, then out[ids[i]] += x[i] (rows of `cols`) for ids in [0, numSegments). */
  scatterAddRows(x: Float32Array, ids: Int32Array, out: Float32Array, numSegments: number, cols: number): void;
  /** dst[i] = the float32 value of the IEEE half bits src[i], i < n (exact). */
  widenF16(src: Uint16Array, dst: Float32Array, n: number): void;
  setKernelThreads(threads: number): void;
  /** The kernels' erf (`which` 0) or exp (1), element-wise: for accuracy tests. */
  approx(which: number, x: Float32Array, y: Float32Array, n: number): void;
}

export const NATIVE_BLAS_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'native', 'build', 'blas.node');

/** Loads the addon, or returns undefined (with the reason) when it is not built or fails to load. */
export function loadNativeBlas(threads: number, file = NATIVE_BLAS_PATH): { blas?: NativeBlas; reason?: string } {
  if (!fs.existsSync(file)) return { reason: `${file} is not built (npm run build:native)` };
  // OpenBLAS's idle workers spin for ~2^28 cycles by default, taking the cores from the wasm threads that run the
  // element-wise work between two matmuls; make them sleep at once. Read by OpenBLAS when it loads.
  process.env.OPENBLAS_THREAD_TIMEOUT ??= '4';
  // The same for the OpenMP threads of the fused kernels (libgomp spins ~300k iterations by default).
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
  try {
    const blas = createRequire(import.meta.url)(file) as NativeBlas;
    blas.setThreads(threads);
    if (typeof blas.geluForward !== 'function') return { reason: `${file} predates the fused kernels (npm run build:native)` };
    blas.setKernelThreads(threads);
    return { blas };
  } catch (e) {
    return { reason: `${file} failed to load: ${e instanceof Error ? e.message : String(e)}` };
  }
}
