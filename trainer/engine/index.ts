/**
 * The tensor engine: tfjs with the backend that fits the machine (tfjs-node-gpu, threaded wasm with the native
 * OpenBLAS addon and fused kernels, or cpu), and the ops the model needs. Other folders import only this file.
 *
 * - Start: `initEngine(options)` once per process, then `tf` from here; `engineName()`, `engineInfo()`,
 *   `engineThreads()` report what was chosen (metric labels, logs).
 * - Options: `EngineOptions` (what a process asks for), `engineOptionsFromConfig` (from the job config's `engine`
 *   section), `resolveEngineOptions` (defaults filled in, every value checked). Errors: `EngineOptionsError`,
 *   `MatMulUnavailableError`, `WasmHeapExhaustedError`, `EngineStartError`, `KernelInputError`.
 * - Model-facing ops (same numbers on every backend as the composed tfjs ops, within the bounds the tests state):
 *   `layerNorm`, `gelu`, `multiHeadAttention`, `crossEntropyRows`, `splitHeads`, `mergeHeads`; `gradients`
 *   (reverse mode that frees memory as it goes).
 *
 * Test-only and benchmark-only hooks are exported under `testing` below and are not for production code.
 */
export {
  tf,
  initEngine,
  engineName,
  engineInfo,
  engineThreads,
  resolveEngineOptions,
  engineOptionsFromConfig,
  EngineOptionsError,
  MatMulUnavailableError,
  type EngineName,
  type EngineMatMul,
  type EngineInfo,
  type EngineOptions,
  type ResolvedEngineOptions,
} from './start';
export { WasmHeapExhaustedError } from './wasm-backend';
export { gradients } from './gradients';
export { crossEntropyRows, gelu, layerNorm, mergeHeads, multiHeadAttention, splitHeads } from './ops';
export { engineTesting } from './testing';
