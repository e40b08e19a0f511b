/**
 * OneHot for tfjs `wasm` with a float32 output. The stock kernel (tfjs-backend-wasm/src/cc/kernels/OneHot.cc)
 * writes int32 values whatever the dtype, so `tf.oneHot(ids, depth, on, off, 'float32')` reads back as denormals
 * (and fractional on/off values, as label smoothing wants, cannot work). This writes floats in JS over the heap;
 * int32 outputs keep the stock kernel. Indices outside [0, depth) give a row of `offValue`, as in tfjs cpu.
 */
import * as tf from '@tensorflow/tfjs-core';
import { dataOf, heapF32, heapI32, replaceWasmKernel, type WasmBackend } from './wasm-backend';

let installed = false;

export function installWasmOneHot(): void {
  if (installed) return;
  replaceWasmKernel(tf.OneHot, (stock) => (args) => {
      const { dtype, depth, onValue, offValue } = args.attrs as unknown as {
        dtype: tf.DataType;
        depth: number;
        onValue: number;
        offValue: number;
      };
      if (dtype !== 'float32') return stock.kernelFunc(args);
      const backend = args.backend as WasmBackend;
      const indices = args.inputs.indices!;
      const count = tf.util.sizeFromShape(indices.shape);
      const out = backend.makeOutput([...indices.shape, depth], 'float32');
      const heap = heapF32(backend); // after makeOutput: it may have grown the heap
      const ids = heapI32(backend);
      const outAt = dataOf(backend, out).memoryOffset / 4;
      const idAt = dataOf(backend, indices).memoryOffset / 4;
      heap.fill(offValue, outAt, outAt + count * depth);
      for (let i = 0; i < count; i++) {
        const id = ids[idAt + i]!;
        if (id >= 0 && id < depth) heap[outAt + i * depth + id] = onValue;
      }
      return out;
  });
  installed = true;
}
