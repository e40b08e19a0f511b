/**
 * Slice and SplitV for tfjs `wasm` that copy only what they return. The stock kernels (tfjs-backend-wasm 4.22
 * kernels/Slice.ts) start with `backend.readSync(x)`, which copies the *whole* input out of the heap into a new
 * JS buffer, and SplitV slices once per piece: splitting a [2304, 256] tensor in four copied it four times over
 * (2 ms). Here a slice is a run of contiguous blocks copied inside the heap (`copyWithin`, a memmove); PadV2
 * (the gradient of a slice) is a fill and the same copy the other way.
 */
import * as tf from '@tensorflow/tfjs-core';
import { dataOf, heapU8, replaceWasmKernel, type WasmBackend } from './wasm-backend';

/**
 * Copies the slice `begin`/`size` of a tensor of `shape` at byte offset `src` to byte offset `dst` (dense), for
 * elements of `bytes` bytes. Trailing axes taken whole merge into one contiguous block per index of the others.
 */
function copySlice(heap: Uint8Array, src: number, dst: number, shape: number[], begin: number[], size: number[], bytes: number, into = false): void {
  const rank = shape.length;
  if (size.some((d) => d === 0)) return;
  if (rank === 0) {
    heap.copyWithin(dst, src, src + bytes);
    return;
  }
  // into: the reverse, a dense block at `src` written into the slice of a tensor of `shape` at `dst` (PadV2).
  const stride = [...tf.util.computeStrides(shape), 1].map((e) => e * bytes); // bytes per step of each axis
  let k = rank - 1; // innermost axis not taken whole: a block is size[k] steps of it (whole axes after it)
  while (k > 0 && size[k] === shape[k]) k--;
  const blockBytes = size[k]! * stride[k]!;
  const base = (into ? dst : src) + begin.reduce((acc, b, d) => acc + b * stride[d]!, 0);
  const count = size.slice(0, k).reduce((p, d) => p * d, 1);
  const index = new Array<number>(k).fill(0);
  let dense = into ? src : dst;
  for (let n = 0; n < count; n++) {
    let at = base;
    for (let d = 0; d < k; d++) at += index[d]! * stride[d]!;
    if (into) heap.copyWithin(at, dense, dense + blockBytes);
    else heap.copyWithin(dense, at, at + blockBytes);
    dense += blockBytes;
    for (let d = k - 1; d >= 0; d--) {
      if (++index[d]! < size[d]!) break;
      index[d] = 0;
    }
  }
}

function sliceKernel(stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const x = args.inputs.x!;
    if (x.dtype === 'string') return stock.kernelFunc(args);
    const backend = args.backend as WasmBackend;
    const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
    const [b, s] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
    const out = backend.makeOutput(s, x.dtype);
    const bytes = tf.util.bytesPerElement(x.dtype);
    copySlice(heapU8(backend), dataOf(backend, x).memoryOffset, dataOf(backend, out).memoryOffset, x.shape, b, s, bytes);
    return out;
  };
}

function splitKernel(stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const x = args.inputs.x!;
    if (x.dtype === 'string') return stock.kernelFunc(args);
    const backend = args.backend as WasmBackend;
    const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
    const a = tf.util.parseAxisParam(axis, x.shape)[0]!;
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, a);
    const bytes = tf.util.bytesPerElement(x.dtype);
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((n) => {
      const size = [...x.shape];
      size[a] = n;
      const out = backend.makeOutput(size, x.dtype);
      // The heap view after makeOutput: the allocation may have grown the heap.
      copySlice(heapU8(backend), dataOf(backend, x).memoryOffset, dataOf(backend, out).memoryOffset, x.shape, begin, size, bytes);
      begin[a]! += n;
      return out;
    });
  };
}

function padKernel(stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const x = args.inputs.x!;
    if (x.dtype !== 'float32' && x.dtype !== 'int32') return stock.kernelFunc(args);
    const backend = args.backend as WasmBackend;
    const { paddings, constantValue } = args.attrs as unknown as { paddings: [number, number][]; constantValue: number };
    const outShape = x.shape.map((d, i) => paddings[i]![0] + d + paddings[i]![1]);
    const out = backend.makeOutput(outShape, x.dtype);
    const at = dataOf(backend, out).memoryOffset;
    const n = outShape.reduce((p, d) => p * d, 1);
    const heap = heapU8(backend); // after makeOutput: the allocation may have grown the heap
    const buffer = heap.buffer;
    if (x.dtype === 'float32') new Float32Array(buffer, at, n).fill(constantValue);
    else new Int32Array(buffer, at, n).fill(constantValue);
    copySlice(heap, dataOf(backend, x).memoryOffset, at, outShape, paddings.map((p) => p[0]), [...x.shape], 4, true);
    return out;
  };
}

let installed = false;

export function installWasmSlice(): void {
  if (installed) return;
  replaceWasmKernel(tf.Slice, sliceKernel);
  replaceWasmKernel(tf.SplitV, splitKernel);
  replaceWasmKernel(tf.PadV2, padKernel);
  installed = true;
}
