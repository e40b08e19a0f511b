/**
 * Typed access to the parts of tfjs-backend-wasm 4.22's `BackendWasm` that our kernels use: the data map (tensor
 * data id → wasm tensor id and heap offset), output allocation, the Emscripten module (heap, cwrap) and the C-side
 * tensor table (`register_tensor`/`dispose_data`), which lets a kernel name a slice of an existing tensor as a
 * tensor of its own without copying it (a "view"). Mirrors tfjs-backend-wasm/src/backend_wasm.ts.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface WasmTensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
  dtype: tf.DataType;
  refCount: number;
}

export interface WasmModule {
  HEAPU8: Uint8Array;
  HEAPF32: Float32Array;
  wasmMemory?: { buffer: ArrayBufferLike };
  cwrap(name: string, returnType: string | null, argTypes: string[]): (...args: unknown[]) => unknown;
  tfjs: {
    registerTensor(id: number, size: number, memoryOffset: number): void;
    disposeData(id: number): void;
  };
}

export interface WasmBackend extends tf.KernelBackend {
  wasm: WasmModule;
  dataIdMap: { get(dataId: tf.DataId): WasmTensorData; has(dataId: tf.DataId): boolean };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: tf.DataType, memoryOffset?: number): tf.TensorInfo;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  incRef(dataId: tf.DataId): void;
}

export function dataOf(backend: WasmBackend, t: tf.TensorInfo): WasmTensorData {
  return backend.dataIdMap.get(t.dataId);
}

/** The whole wasm heap as floats. Made fresh from the memory each time: a heap that grew leaves old views short. */
export function heapF32(backend: WasmBackend): Float32Array {
  const buffer = backend.wasm.wasmMemory?.buffer ?? backend.wasm.HEAPF32.buffer;
  return new Float32Array(buffer);
}

export function heapI32(backend: WasmBackend): Int32Array {
  const buffer = backend.wasm.wasmMemory?.buffer ?? backend.wasm.HEAPF32.buffer;
  return new Int32Array(buffer);
}

/**
 * Registers `size` elements at byte offset `memoryOffset` as a C-side tensor and returns its id. The memory stays
 * owned by the tensor it belongs to; `releaseView` forgets the id (and the XNNPACK operators cached on it) without
 * freeing anything.
 */
export function makeView(backend: WasmBackend, memoryOffset: number, size: number): number {
  const id = backend.dataIdNextNumber++;
  backend.wasm.tfjs.registerTensor(id, size, memoryOffset);
  return id;
}

export function releaseView(backend: WasmBackend, id: number): void {
  backend.wasm.tfjs.disposeData(id);
}

/** Runs another registered wasm kernel from inside a kernel (no tape, no engine bookkeeping). */
export function runWasmKernel(
  name: string,
  inputs: tf.NamedTensorInfoMap,
  backend: WasmBackend,
  attrs: tf.NamedAttrMap = {},
): tf.TensorInfo {
  const config = tf.getKernel(name, 'wasm');
  if (!config) throw new Error(`wasm kernel ${name} is not registered`);
  return config.kernelFunc({ inputs, backend, attrs }) as tf.TensorInfo;
}
