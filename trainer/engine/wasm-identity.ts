/**
 * Copy-free Identity, same-dtype Cast and order-keeping Transpose for tfjs `wasm`. The stock wasm kernels copy the data (the cpu backend's
 * share it), and the gradients of Multiply, RealDiv and others call `cast(x, 'float32')` on float32 tensors, the tape
 * clones gradients it passes through: a Q-Former layer's backward made ~230 such copies (~7% of its kernel time).
 * Tensor data is immutable in tfjs (kernels write only to the outputs they allocate; a variable's `assign` swaps
 * its data id), so an output may share its input's data and count a reference, as tfjs-backend-cpu's Identity does.
 */
import * as tf from '@tensorflow/tfjs-core';
import { replaceWasmKernel, type WasmBackend } from './wasm-backend';

function share(backend: WasmBackend, x: tf.TensorInfo): tf.TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

let installed = false;

export function installWasmIdentity(): void {
  if (installed) return;
  replaceWasmKernel(tf.Identity, (stock) => (args) => {
    const x = args.inputs.x!;
    return x.dtype === 'string' ? stock.kernelFunc(args) : share(args.backend as WasmBackend, x);
  });
  // A Transpose that moves only axes of size 1 (the gather gradient transposes by an identity permutation) is a
  // reshape; the stock kernel copies the data for it.
  replaceWasmKernel(tf.Transpose, (stock) => (args) => {
    const x = args.inputs.x!;
    const { perm } = args.attrs as unknown as { perm: number[] };
    const moved = perm.filter((p) => x.shape[p] !== 1);
    if (x.dtype === 'string' || moved.some((p, i) => i > 0 && p < moved[i - 1]!)) return stock.kernelFunc(args);
    const out = share(args.backend as WasmBackend, x);
    out.shape = perm.map((p) => x.shape[p]!);
    return out;
  });
  replaceWasmKernel(tf.Cast, (stock) => (args) => {
    const x = args.inputs.x!;
    const { dtype } = args.attrs as unknown as { dtype: tf.DataType };
    return x.dtype === dtype && dtype !== 'string' ? share(args.backend as WasmBackend, x) : stock.kernelFunc(args);
  });
  installed = true;
}
