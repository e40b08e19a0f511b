/**
 * Sum over leading axes on OpenBLAS. The stock wasm Sum reduces innermost axes only, so a sum over the rows of
 * [N, C] (every bias gradient, every broadcast-add gradient) first transposes the whole input. With the native
 * addon loaded, a sum over a prefix of the axes is one GEMM of a row of ones with the input seen as
 * [rows, rest]: no copy, memory-bound. Other sums keep the stock kernel.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NativeBlas } from './native-blas';
import { dataOf, heapF32, replaceWasmKernel, type WasmBackend } from './wasm-backend';

let ones = new Float32Array(0);

function onesOf(count: number): Float32Array {
  if (ones.length < count) ones = new Float32Array(Math.max(count, 2 * ones.length)).fill(1);
  return ones.subarray(0, count);
}

function makeSum(stock: tf.KernelConfig, blas: NativeBlas): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as WasmBackend;
    const x = args.inputs.x!;
    const { axis, keepDims } = args.attrs as unknown as { axis: number | number[]; keepDims: boolean };
    const rank = x.shape.length;
    const axes = tf.util.parseAxisParam(axis, x.shape).sort((p, q) => p - q);
    const isPrefix = axes.length > 0 && axes.every((a, i) => a === i);
    if (x.dtype !== 'float32' || !isPrefix || axes.length === rank) return stock.kernelFunc(args);
    const rows = tf.util.sizeFromShape(x.shape.slice(0, axes.length));
    const rest = x.shape.slice(axes.length);
    const cols = tf.util.sizeFromShape(rest);
    const out = backend.makeOutput(keepDims ? [...axes.map(() => 1), ...rest] : rest, 'float32');
    const heap = heapF32(backend); // after makeOutput: it may have grown the heap
    const xAt = dataOf(backend, x).memoryOffset / 4;
    const outAt = dataOf(backend, out).memoryOffset / 4;
    if (cols === 0) return out;
    if (rows === 0) {
      heap.fill(0, outAt, outAt + cols);
      return out;
    }
    // [1, rows] · [rows, cols] → [1, cols]
    const xRows = heap.subarray(xAt, xAt + rows * cols);
    blas.sgemm(onesOf(rows), xRows, heap.subarray(outAt, outAt + cols), 1, cols, rows, false, false, 1, 0, 0);
    return out;
  };
}

let installed = false;

/** Replaces the wasm Sum kernel with one that sends leading-axis sums to OpenBLAS. */
export function installWasmSum(blas: NativeBlas): void {
  if (installed) return;
  replaceWasmKernel(tf.Sum, (stock) => makeSum(stock, blas));
  installed = true;
}
