/**
 * Copy-free Identity and same-dtype Cast for tfjs `wasm`. The stock wasm kernels copy the data (the cpu backend's
 * share it), and the gradients of Multiply, RealDiv and others call `cast(x, 'float32')` on float32 tensors, the tape
 * clones gradients it passes through: a Q-Former layer's backward made ~230 such copies (~7% of its kernel time).
 * Tensor data is immutable in tfjs (kernels write only to the outputs they allocate; a variable's `assign` swaps
 * its data id), so an output may share its input's data and count a reference, as tfjs-backend-cpu's Identity does.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WasmBackend } from './wasm-backend';

function share(backend: WasmBackend, x: tf.TensorInfo): tf.TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

let installed = false;

export function installWasmIdentity(): void {
  if (installed) return;
  const stockIdentity = tf.getKernel(tf.Identity, 'wasm');
  const stockCast = tf.getKernel(tf.Cast, 'wasm');
  if (!stockIdentity || !stockCast) throw new Error('the wasm backend has no Identity/Cast kernel to replace');
  tf.unregisterKernel(tf.Identity, 'wasm');
  tf.registerKernel({
    kernelName: tf.Identity,
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = args.inputs.x!;
      return x.dtype === 'string' ? stockIdentity.kernelFunc(args) : share(args.backend as WasmBackend, x);
    },
  });
  tf.unregisterKernel(tf.Cast, 'wasm');
  tf.registerKernel({
    kernelName: tf.Cast,
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = args.inputs.x!;
      const { dtype } = args.attrs as unknown as { dtype: tf.DataType };
      return x.dtype === dtype && dtype !== 'string' ? share(args.backend as WasmBackend, x) : stockCast.kernelFunc(args);
    },
  });
  installed = true;
}
