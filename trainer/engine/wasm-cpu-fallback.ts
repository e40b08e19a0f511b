/**
 * The kernels tfjs `wasm` lacks and a model may still meet (Einsum; the filter and input gradients of convolutions,
 * e.g. of a trainable patch embedding) run on the tfjs cpu backend's kernels: inputs are read off the wasm heap,
 * the cpu kernel computes, the outputs are written back as wasm tensors. Slow (the cpu backend is ~40× slower
 * than wasm), but correct and rare; each first use is logged so that a hot one is seen.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createLogger } from '../../common';
import type { WasmBackend } from './wasm-backend';
import { KernelUnavailableError } from './errors';

/** Kernels tfjs-backend-wasm 4.22 lacks, that take and give real (not complex or string) tensors. */
export const CPU_FALLBACK_KERNELS = [
  'Einsum',
  'Conv2DBackpropFilter',
  'DepthwiseConv2dNativeBackpropFilter',
  'DepthwiseConv2dNativeBackpropInput',
] as const;

const log = createLogger('engine');

function fallback(name: string, cpuKernel: tf.KernelConfig): tf.KernelFunc {
  let logged = false;
  return (args) => {
    const wasm = args.backend as WasmBackend;
    const cpu = tf.engine().findBackend('cpu');
    if (!cpu) throw new KernelUnavailableError(`${name} is not implemented on wasm, and the cpu backend it falls back to is not registered (import @tensorflow/tfjs-backend-cpu)`);
    if (!logged) {
      log.info('kernel runs on the cpu backend (not implemented on wasm)', { kernel: name });
      logged = true;
    }
    // Some kernels (Einsum, Concat, AddN) take an array of inputs: keep the container's kind.
    const cpuInputs = (Array.isArray(args.inputs) ? [] : {}) as tf.NamedTensorInfoMap;
    const made: tf.DataId[] = [];
    try {
      for (const [key, t] of Object.entries(args.inputs)) {
        if (!t) continue;
        const dataId = cpu.write(wasm.readSync(t.dataId) as tf.BackendValues, t.shape, t.dtype);
        made.push(dataId);
        cpuInputs[key] = { dataId, shape: t.shape, dtype: t.dtype };
      }
      const result = cpuKernel.kernelFunc({ inputs: cpuInputs, backend: cpu, attrs: args.attrs });
      const outs = Array.isArray(result) ? result : [result];
      for (const o of outs) made.push(o.dataId);
      const back = outs.map((o) => ({
        dataId: wasm.write(cpu.readSync(o.dataId) as tf.BackendValues, o.shape, o.dtype),
        shape: o.shape,
        dtype: o.dtype,
      }));
      return Array.isArray(result) ? back : back[0]!;
    } finally {
      for (const id of made) cpu.disposeData(id, true);
    }
  };
}

let installed = false;

/** Registers the cpu fallbacks for the kernels wasm lacks (skipping any a later tfjs brings). */
export function installWasmCpuFallbacks(): string[] {
  if (installed) return [];
  const added: string[] = [];
  for (const name of CPU_FALLBACK_KERNELS) {
    const cpuKernel = tf.getKernel(name, 'cpu');
    if (!cpuKernel || tf.getKernel(name, 'wasm')) continue;
    tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: fallback(name, cpuKernel) });
    added.push(name);
  }
  installed = true;
  return added;
}
