/**
 * Typed access to the parts of tfjs-backend-wasm 4.22's `BackendWasm` that our kernels use: the data map (tensor
 * data id → wasm tensor id and heap offset), output allocation, the Emscripten module (heap, cwrap) and the C-side
 * tensor table (`register_tensor`/`dispose_data`), which lets a kernel name a slice of an existing tensor as a
 * tensor of its own without copying it (a "view"). Mirrors tfjs-backend-wasm/src/backend_wasm.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Blip2Error } from '../../common';
import { TfjsVersionError } from './errors';

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

export function heapU8(backend: WasmBackend): Uint8Array {
  return new Uint8Array(backend.wasm.wasmMemory?.buffer ?? backend.wasm.HEAPU8.buffer);
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
  if (!config) throw new TfjsVersionError(`wasm kernel ${name} is not registered`);
  return config.kernelFunc({ inputs, backend, attrs }) as tf.TensorInfo;
}

/** The wasm heap cannot hold an allocation: a clear error instead of tfjs writing through a null offset. */
export class WasmHeapExhaustedError extends Blip2Error {
  constructor(
    readonly requestedBytes: number,
    readonly heapBytes: number,
  ) {
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
    super(
      `wasm heap exhausted: cannot allocate ${mib(requestedBytes)} (heap ${mib(heapBytes)}, limit 4096 MiB). ` +
        'Lower the batch size (or max_txt_len), or run on tfjs-node-gpu.',
    );
  }
}

/**
 * Makes the backend's allocations fail loudly. tfjs-backend-wasm 4.22's `move` (where every tensor's memory is
 * allocated) takes `_malloc`'s result unchecked: when the 4 GiB heap cannot grow, malloc returns 0 and the tensor is
 * written over the start of the heap (the process then corrupts itself or spins); a request of 4 GiB or more wraps
 * around in malloc's 32-bit argument. This `move` is the stock one with both cases checked first.
 */
export function guardWasmAllocations(backend: WasmBackend): void {
  type Move = (dataId: tf.DataId, values: tf.backend_util.BackendValues | null, shape: number[], dtype: tf.DataType, refCount: number) => void;
  const b = backend as WasmBackend & { move: Move; __guarded?: boolean };
  if (b.__guarded) return;
  const stockMove = b.move.bind(b);
  const wasm = b.wasm as WasmModule & { _malloc(n: number): number; _free(at: number): void };
  const heapBytes = () => (wasm.wasmMemory?.buffer ?? wasm.HEAPU8.buffer).byteLength;
  b.move = (dataId, values, shape, dtype, refCount) => {
    if (dtype === 'string') return stockMove(dataId, values, shape, dtype, refCount);
    const numBytes = tf.util.sizeFromShape(shape) * tf.util.bytesPerElement(dtype);
    if (numBytes >= 2 ** 32) throw new WasmHeapExhaustedError(numBytes, heapBytes());
    const id = b.dataIdNextNumber++;
    const memoryOffset = wasm._malloc(numBytes) >>> 0;
    if (memoryOffset === 0 && numBytes > 0) throw new WasmHeapExhaustedError(numBytes, heapBytes());
    (b.dataIdMap as unknown as Map<tf.DataId, WasmTensorData>).set(dataId, { id, memoryOffset, shape, dtype, refCount });
    wasm.tfjs.registerTensor(id, tf.util.sizeFromShape(shape), memoryOffset);
    if (values != null) {
      const v = values as Float32Array;
      heapU8(b).set(new Uint8Array(v.buffer, v.byteOffset, numBytes), memoryOffset); // a fresh view: the heap may have grown
    }
  };
  b.__guarded = true;
}

/** Replaces a stock wasm kernel with `make(stock)`, which may hand the cases it does not take back to the stock one. */
export function replaceWasmKernel(name: string, make: (stock: tf.KernelConfig) => tf.KernelFunc): void {
  const stock = tf.getKernel(name, 'wasm');
  if (!stock) throw new TfjsVersionError(`the wasm backend has no ${name} kernel to replace`);
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: make(stock) });
}
