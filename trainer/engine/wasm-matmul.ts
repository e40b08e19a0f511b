/**
 * Fast MatMul for tfjs `wasm`. The stock kernel (tfjs-backend-wasm/src/cc/kernels/_FusedMatMul.cc) reaches
 * XNNPACK's GEMM only when both inputs are untransposed and have a batch size of 1; any transposed or batched input
 * falls to a scalar triple loop (1–4 GFLOP/s against 40–80). The gradient of every matmul has a transposed input,
 * so training ran almost entirely on the slow loop. This kernel always reaches the fast path:
 *  - a transposed input is transposed explicitly first (the wasm Transpose kernel);
 *  - when `b` has no batch (a weight), the batch of `a` folds into rows: [B, M, K]·[K, N] is one [B·M, K]·[K, N];
 *  - otherwise each batch runs as one 2-D GEMM on *views* (C-side tensor ids pointing into the inputs' and the
 *    output's memory; nothing is copied), which also gives numpy-style broadcasting of the batch dimensions.
 * `_FusedMatMul` (matmul + bias + activation) runs as this matmul, then bias and activation kernels.
 * The BatchMatMul gradient is re-registered so that it, too, reaches the fast path and handles broadcasting.
 * When the native OpenBLAS addon is loaded (./native-blas.ts), both kernels hand the tensors' heap memory to
 * `cblas_sgemm` instead (transposes and batch strides included, no copies), 3–5× faster than XNNPACK here.
 */
import * as tf from '@tensorflow/tfjs-core';
import { KernelInputError, TfjsVersionError } from './errors';
import type { NativeBlas } from './native-blas';
import {
  dataOf,
  heapF32,
  makeView,
  releaseView,
  runWasmKernel,
  type WasmBackend,
} from './wasm-backend';

type MatMulFn = (
  aId: number,
  aShape: Uint8Array,
  aRank: number,
  bId: number,
  bShape: Uint8Array,
  bRank: number,
  transposeA: boolean,
  transposeB: boolean,
  outId: number,
) => void;

let gemm: MatMulFn | undefined;
let blas: NativeBlas | undefined;

const shapeBytes = (shape: number[]) => new Uint8Array(new Int32Array(shape).buffer);
const sizeOf = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

/** Swaps the last two axes (a copy). */
function transposeLast2(backend: WasmBackend, x: tf.TensorInfo): tf.TensorInfo {
  const rank = x.shape.length;
  const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
  return runWasmKernel('Transpose', { x }, backend, { perm });
}

interface Operands {
  /** `a` as [..., M, K] and `b` as [..., K, N], transposed copies where needed. */
  a: tf.TensorInfo;
  b: tf.TensorInfo;
  /** Tensors this kernel allocated and must dispose. */
  temps: tf.TensorInfo[];
  m: number;
  k: number;
  n: number;
  aOuter: number[];
  bOuter: number[];
  outOuter: number[];
}

function shapesOf(kernel: string, a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean) {
  if (a.dtype !== 'float32' || b.dtype !== 'float32') {
    throw new KernelInputError(`${kernel} on wasm takes float32 inputs, got a: ${a.dtype}, b: ${b.dtype}`);
  }
  const ra = a.shape.length;
  const rb = b.shape.length;
  if (ra < 2 || rb < 2) throw new KernelInputError(`${kernel} needs inputs of rank ≥ 2, got a: [${a.shape}], b: [${b.shape}]`);
  const m = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
  const k = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const kb = transposeB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
  const n = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
  if (k !== kb) {
    throw new KernelInputError(
      `${kernel}: inner dimensions must match, got a: [${a.shape}] (transposeA=${transposeA}) and ` +
        `b: [${b.shape}] (transposeB=${transposeB}): ${k} ≠ ${kb}`,
    );
  }
  const aOuter = a.shape.slice(0, -2);
  const bOuter = b.shape.slice(0, -2);
  const outOuter = tf.broadcast_util.assertAndGetBroadcastShape(aOuter, bOuter);
  return { m, k, n, aOuter, bOuter, outOuter };
}

function operands(
  kernel: string,
  backend: WasmBackend,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
): Operands {
  const { m, k, n, aOuter, bOuter, outOuter } = shapesOf(kernel, a, b, transposeA, transposeB);
  const temps: tf.TensorInfo[] = [];
  let a2 = a;
  let b2 = b;
  if (transposeA && m > 1 && k > 0) temps.push((a2 = transposeLast2(backend, a)));
  else if (transposeA) a2 = { ...a, shape: [...aOuter, m, k] }; // one row or empty: same memory either way
  // b is always transposed by a copy: XNNPACK caches its packed weights under b's tensor id, whatever the shape, so
  // b's memory must never be read with another shape under the same id.
  if (transposeB && k > 0 && n > 0) temps.push((b2 = transposeLast2(backend, b)));
  else if (transposeB) b2 = { ...b, shape: [...bOuter, k, n] };
  return { a: a2, b: b2, temps, m, k, n, aOuter, bOuter, outOuter };
}

/** Flat index into an operand's batch for each flat index of the broadcast output batch. */
function batchIndex(outOuter: number[], opOuter: number[]): (i: number) => number {
  const offset = outOuter.length - opOuter.length;
  return (i: number) => {
    let index = 0;
    let stride = 1;
    for (let d = outOuter.length - 1; d >= 0; d--) {
      const coord = i % outOuter[d]!;
      i = Math.floor(i / outOuter[d]!);
      const od = d - offset;
      if (od >= 0) {
        if (opOuter[od]! !== 1) index += coord * stride;
        stride *= opOuter[od]!;
      }
    }
    return index;
  };
}

/** BatchMatMul through OpenBLAS on the wasm heap: transposes and broadcasting handled by strides, no copies. */
function blasBatchMatMul(
  backend: WasmBackend,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
): tf.TensorInfo {
  const { m, k, n, aOuter, bOuter, outOuter } = shapesOf('BatchMatMul', a, b, transposeA, transposeB);
  const out = backend.makeOutput([...outOuter, m, n], 'float32');
  const batch = sizeOf(outOuter);
  const heap = heapF32(backend); // after makeOutput: it may have grown the heap
  const outAt = dataOf(backend, out).memoryOffset / 4;
  if (batch * m * n === 0) return out;
  if (k === 0) {
    heap.fill(0, outAt, outAt + batch * m * n);
    return out;
  }
  const aAt = dataOf(backend, a).memoryOffset / 4;
  const bAt = dataOf(backend, b).memoryOffset / 4;
  const batchA = sizeOf(aOuter);
  const batchB = sizeOf(bOuter);
  const aAll = heap.subarray(aAt, aAt + batchA * m * k);
  const bAll = heap.subarray(bAt, bAt + batchB * k * n);
  const outAll = heap.subarray(outAt, outAt + batch * m * n);
  if (batchB === 1 && batchA === batch && !transposeA) {
    // b is a single matrix: all rows of a in one GEMM.
    blas!.sgemm(aAll, bAll, outAll, batch * m, n, k, false, transposeB, 1, 0, 0);
  } else if ((batchA === 1 || batchA === batch) && (batchB === 1 || batchB === batch)) {
    const strideA = batchA === 1 ? 0 : m * k;
    const strideB = batchB === 1 ? 0 : k * n;
    blas!.sgemm(aAll, bAll, outAll, m, n, k, transposeA, transposeB, batch, strideA, strideB);
  } else {
    const aIndex = batchIndex(outOuter, aOuter);
    const bIndex = batchIndex(outOuter, bOuter);
    for (let i = 0; i < batch; i++) {
      const ai = aIndex(i) * m * k;
      const bi = bIndex(i) * k * n;
      blas!.sgemm(
        aAll.subarray(ai, ai + m * k),
        bAll.subarray(bi, bi + k * n),
        outAll.subarray(i * m * n, (i + 1) * m * n),
        m, n, k, transposeA, transposeB, 1, 0, 0,
      );
    }
  }
  return out;
}

function batchMatMul(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: WasmBackend;
  attrs: { transposeA: boolean; transposeB: boolean };
}): tf.TensorInfo {
  const { inputs, backend, attrs } = args;
  if (blas) return blasBatchMatMul(backend, inputs.a!, inputs.b!, attrs.transposeA, attrs.transposeB);
  const ops = operands('BatchMatMul', backend, inputs.a!, inputs.b!, attrs.transposeA, attrs.transposeB);
  const { m, k, n, aOuter, bOuter, outOuter } = ops;
  const out = backend.makeOutput([...outOuter, m, n], 'float32');
  try {
    const outData = dataOf(backend, out);
    if (sizeOf(out.shape) === 0) return out;
    if (k === 0) {
      heapF32(backend).fill(0, outData.memoryOffset / 4, outData.memoryOffset / 4 + sizeOf(out.shape));
      return out;
    }
    const aData = dataOf(backend, ops.a);
    const bData = dataOf(backend, ops.b);
    const batch = sizeOf(outOuter);
    const batchA = sizeOf(aOuter);
    const batchB = sizeOf(bOuter);
    // b always goes in under a fresh id (a view), released after the call: XNNPACK caches the operator (packed
    // weights) under b's id without its shape, and tfjs shares one id among tensors of different shapes (Reshape,
    // Identity). Packing b costs K·N against the GEMM's M·K·N.
    if (batchB === 1 && batchA === batch) {
      // b is a single matrix: all rows of a in one GEMM.
      const bId = makeView(backend, bData.memoryOffset, k * n);
      try {
        gemm!(aData.id, shapeBytes([1, batchA * m, k]), 3, bId, shapeBytes([1, k, n]), 3, false, false, outData.id);
      } finally {
        releaseView(backend, bId);
      }
      return out;
    }
    const aIndex = batchIndex(outOuter, aOuter);
    const bIndex = batchIndex(outOuter, bOuter);
    const aShape = shapeBytes([1, m, k]);
    const bShape = shapeBytes([1, k, n]);
    for (let i = 0; i < batch; i++) {
      const aId = batchA === 1 ? aData.id : makeView(backend, aData.memoryOffset + aIndex(i) * m * k * 4, m * k);
      const bId = makeView(backend, bData.memoryOffset + bIndex(i) * k * n * 4, k * n);
      const outId = makeView(backend, outData.memoryOffset + i * m * n * 4, m * n);
      try {
        gemm!(aId, aShape, 3, bId, bShape, 3, false, false, outId);
      } finally {
        if (aId !== aData.id) releaseView(backend, aId);
        releaseView(backend, bId);
        releaseView(backend, outId);
      }
    }
    return out;
  } catch (e) {
    backend.disposeData(out.dataId);
    throw e;
  } finally {
    for (const t of ops.temps) backend.disposeData(t.dataId);
  }
}

/** Applies a fused activation with the backend's own kernels; disposes `x` when it returns a new tensor. */
function activate(
  backend: WasmBackend,
  x: tf.TensorInfo,
  activation: string,
  preluWeights: tf.TensorInfo | undefined,
  leakyreluAlpha: number | undefined,
): tf.TensorInfo {
  let y: tf.TensorInfo;
  switch (activation) {
    case 'linear':
      return x;
    case 'relu':
      y = runWasmKernel('Relu', { x }, backend);
      break;
    case 'relu6':
      y = runWasmKernel('Relu6', { x }, backend);
      break;
    case 'elu':
      y = runWasmKernel('Elu', { x }, backend);
      break;
    case 'sigmoid':
      y = runWasmKernel('Sigmoid', { x }, backend);
      break;
    case 'leakyrelu':
      y = runWasmKernel('LeakyRelu', { x }, backend, { alpha: leakyreluAlpha ?? 0.2 });
      break;
    case 'prelu':
      y = runWasmKernel('Prelu', { x, alpha: preluWeights! }, backend);
      break;
    default:
      throw new KernelInputError(`_FusedMatMul: activation ${JSON.stringify(activation)} is not supported on wasm`);
  }
  backend.disposeData(x.dataId);
  return y;
}

/**
 * x·op(w) + bias for 2-D x and w and a bias [N] (a Linear layer) in one pass: the bias is written into every output
 * row, then OpenBLAS adds the product to it (beta = 1), which is the same single float addition per element as a
 * separate Add, without a second pass over the output. Undefined for any other case.
 */
function blasLinear(backend: WasmBackend, inputs: tf.NamedTensorInfoMap, transposeA: boolean, transposeB: boolean): tf.TensorInfo | undefined {
  const { a, b, bias } = inputs;
  if (!a || !b || !bias || transposeA || inputs.preluActivationWeights) return undefined;
  if (a.shape.length !== 2 || b.shape.length !== 2 || bias.shape.length !== 1) return undefined;
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || bias.dtype !== 'float32') return undefined;
  const [m, k] = a.shape as [number, number];
  const kb = transposeB ? b.shape[1]! : b.shape[0]!;
  const n = transposeB ? b.shape[0]! : b.shape[1]!;
  if (k !== kb || bias.shape[0] !== n || m * n * k === 0) return undefined;
  const out = backend.makeOutput([m, n], 'float32');
  const heap = heapF32(backend); // after makeOutput: it may have grown the heap
  const outAt = dataOf(backend, out).memoryOffset / 4;
  const biasAt = dataOf(backend, bias).memoryOffset / 4;
  const row = heap.subarray(biasAt, biasAt + n);
  for (let r = 0; r < m; r++) heap.set(row, outAt + r * n);
  const aAt = dataOf(backend, a).memoryOffset / 4;
  const bAt = dataOf(backend, b).memoryOffset / 4;
  blas!.sgemm(heap.subarray(aAt, aAt + m * k), heap.subarray(bAt, bAt + k * n), heap.subarray(outAt, outAt + m * n), m, n, k, false, transposeB, 1, 0, 0, 1);
  return out;
}

/**
 * `_FusedMatMul` (matmul + bias + activation) as our BatchMatMul, then the backend's Add and activation kernels.
 * The stock fused kernel is not used: on its scalar path it adds the bias by flat output position instead of by
 * column, and its XNNPACK path caches packed weights under b's id (see above).
 */
const fusedMatMul: tf.KernelFunc = (args) => {
  const { inputs, attrs } = args;
  const backend = args.backend as WasmBackend;
  const { transposeA, transposeB, activation, leakyreluAlpha } = attrs as {
    transposeA: boolean;
    transposeB: boolean;
    activation: string;
    leakyreluAlpha?: number;
  };
  const biased = blas && (activation ?? 'linear') === 'linear' ? blasLinear(backend, inputs, transposeA, transposeB) : undefined;
  if (biased) return biased;
  let out = batchMatMul({ inputs: { a: inputs.a!, b: inputs.b! }, backend, attrs: { transposeA, transposeB } });
  if (inputs.bias) {
    const biased = runWasmKernel('Add', { a: out, b: inputs.bias }, backend);
    backend.disposeData(out.dataId);
    out = biased;
  }
  return activate(backend, out, activation, inputs.preluActivationWeights, leakyreluAlpha);
};

/** Sums `x` over the axes that broadcasting added or stretched, so that it has `shape`. */
function reduceTo(x: tf.Tensor, shape: number[]): tf.Tensor {
  if (x.shape.length === shape.length && x.shape.every((d, i) => d === shape[i])) return x;
  const lead = x.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < x.shape.length; i++) {
    if (i < lead || (shape[i - lead] === 1 && x.shape[i] !== 1)) axes.push(i);
  }
  return tf.reshape(tf.sum(x, axes), shape);
}

/**
 * Gradient of BatchMatMul (the stock one, tfjs-core/src/gradients/BatchMatMul_grad.ts, plus broadcasting): with
 * A = op(a), B = op(b): dA = dy·Bᵀ, dB = Aᵀ·dy, summed over broadcast batch axes. When b is one matrix shared by
 * a batched a, dB folds the batch into one GEMM over all rows instead of a batch of GEMMs and a sum.
 */
export const batchMatMulGradConfig: tf.GradConfig = {
  kernelName: tf.BatchMatMul,
  inputsToSave: ['a', 'b'],
  gradFunc: (dy, saved, attrs) => {
    const [a, b] = saved as [tf.Tensor, tf.Tensor];
    const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const g = dy as tf.Tensor;
    const ra = a.shape.length;
    const k = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
    const n = g.shape[g.shape.length - 1]!;
    const bIsMatrix = sizeOf(b.shape.slice(0, -2)) === 1;
    return {
      a: () =>
        reduceTo(transposeA ? tf.matMul(b, g, transposeB, true) : tf.matMul(g, b, false, !transposeB), a.shape),
      b: () => {
        if (bIsMatrix && !transposeA && ra > 2) {
          const a2 = tf.reshape(a, [-1, k]); // [B·M, K]
          const g2 = tf.reshape(g, [-1, n]); // [B·M, N]
          const db = transposeB ? tf.matMul(g2, a2, true, false) : tf.matMul(a2, g2, true, false);
          return tf.reshape(db, b.shape);
        }
        return reduceTo(transposeB ? tf.matMul(g, a, true, transposeA) : tf.matMul(a, g, !transposeA, false), b.shape);
      },
    };
  },
};

let installed = false;

/**
 * Replaces the wasm BatchMatMul and _FusedMatMul kernels (the gradient, `batchMatMulGradConfig`, is registered by
 * initEngine for every engine). Call once wasm is active.
 * With `nativeBlas` the kernels run on OpenBLAS; without, on XNNPACK.
 */
export function installWasmMatMul(backend: WasmBackend, nativeBlas?: NativeBlas): void {
  if (installed) return;
  blas = nativeBlas;
  if (!tf.getKernel(tf.BatchMatMul, 'wasm') || !tf.getKernel(tf._FusedMatMul, 'wasm')) {
    throw new TfjsVersionError('the wasm backend has no BatchMatMul/_FusedMatMul kernel to replace');
  }
  gemm = backend.wasm.cwrap(tf.BatchMatMul, null, [
    'number', // a_id
    'array', // a_shape
    'number', // a_shape length
    'number', // b_id
    'array', // b_shape
    'number', // b_shape length
    'number', // transpose_a
    'number', // transpose_b
    'number', // out_id
  ]) as MatMulFn;
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  tf.registerKernel({ kernelName: tf.BatchMatMul, backendName: 'wasm', kernelFunc: batchMatMul as unknown as tf.KernelFunc });
  tf.unregisterKernel(tf._FusedMatMul, 'wasm');
  tf.registerKernel({ kernelName: tf._FusedMatMul, backendName: 'wasm', kernelFunc: fusedMatMul });
  installed = true;
}
