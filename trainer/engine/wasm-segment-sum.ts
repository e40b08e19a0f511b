/**
 * UnsortedSegmentSum for tfjs `wasm`, which has none. It is the gradient of `gather` (tfjs-core's GatherV2_grad),
 * i.e. of every embedding lookup, so training cannot run on wasm without it. Semantics of the tfjs cpu kernel
 * (tfjs-backend-cpu/src/kernels/UnsortedSegmentSum.ts): out[s, …] = Σ x[i, …] over the i with segmentIds[i] = s;
 * ids outside [0, numSegments) contribute nothing. `segmentIds` may have any rank; it indexes the leading axes of
 * `x`. A scatter-add straight over the wasm heap (native with the addon, else JS): one pass over x, no one-hot matrix.
 */
import * as tf from '@tensorflow/tfjs-core';
import { KernelInputError } from './errors';
import type { NativeBlas } from './native-blas';
import { dataOf, heapF32, heapI32, type WasmBackend } from './wasm-backend';

/** The native addon, when loaded: float32 sums run there (zero-fill and row adds vectorised). */
let blas: NativeBlas | undefined;

function unsortedSegmentSum(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: WasmBackend;
  attrs: { numSegments: number };
}): tf.TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const ids = inputs.segmentIds!;
  const { numSegments } = attrs;
  if (ids.dtype !== 'int32') throw new KernelInputError(`UnsortedSegmentSum: segmentIds must be int32, got ${ids.dtype}`);
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new KernelInputError(`UnsortedSegmentSum on wasm takes float32 or int32 x, got ${x.dtype}`);
  }
  if (!Number.isInteger(numSegments) || numSegments < 0) {
    throw new KernelInputError(`UnsortedSegmentSum: numSegments must be a non-negative integer, got ${numSegments}`);
  }
  const lead = ids.shape.length;
  if (lead > x.shape.length || ids.shape.some((d, i) => d !== x.shape[i])) {
    throw new KernelInputError(`UnsortedSegmentSum: segmentIds shape [${ids.shape}] must be a prefix of x shape [${x.shape}]`);
  }
  const innerShape = x.shape.slice(lead);
  const inner = innerShape.reduce((p, d) => p * d, 1);
  const count = ids.shape.reduce((p, d) => p * d, 1);
  const out = backend.makeOutput([numSegments, ...innerShape], x.dtype);
  // Views made after allocating: the allocation may have grown the heap.
  const heap = x.dtype === 'float32' ? heapF32(backend) : heapI32(backend);
  const idx = heapI32(backend);
  const xAt = dataOf(backend, x).memoryOffset / 4;
  const idAt = dataOf(backend, ids).memoryOffset / 4;
  const outAt = dataOf(backend, out).memoryOffset / 4;
  if (blas && x.dtype === 'float32') {
    const f = heap as Float32Array;
    blas.scatterAddRows(f.subarray(xAt, xAt + count * inner), idx.subarray(idAt, idAt + count), f.subarray(outAt, outAt + numSegments * inner), numSegments, inner);
    return out;
  }
  heap.fill(0, outAt, outAt + numSegments * inner);
  for (let i = 0; i < count; i++) {
    const s = idx[idAt + i]!;
    if (s < 0 || s >= numSegments) continue;
    const src = xAt + i * inner;
    const dst = outAt + s * inner;
    for (let j = 0; j < inner; j++) heap[dst + j] += heap[src + j]!;
  }
  return out;
}

let installed = false;

/** Registers the kernel on wasm (once; a later tfjs that brings its own keeps its own). */
export function installWasmSegmentSum(native?: NativeBlas): void {
  if (installed) return;
  blas = native;
  if (!tf.getKernel(tf.UnsortedSegmentSum, 'wasm')) {
    tf.registerKernel({
      kernelName: tf.UnsortedSegmentSum,
      backendName: 'wasm',
      kernelFunc: unsortedSegmentSum as unknown as tf.KernelFunc,
    });
  }
  installed = true;
}
