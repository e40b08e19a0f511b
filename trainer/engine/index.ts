/**
 * The tensor engine: tfjs with the backend that fits the machine (tfjs-node-gpu, threaded wasm with the native
 * OpenBLAS addon and fused kernels, or cpu), and the ops the model needs. Other folders import only this file.
 *
 * - Start: `initEngine(options)` once per process, then `tf` from here; `engineName()`, `engineInfo()`,
 *   `engineThreads()` report what was chosen (metric labels, logs).
 * - Options: `EngineOptions` (what a process asks for), `engineOptionsFromConfig` (from the job config's `engine`
 *   section), `resolveEngineOptions` (defaults filled in, every value checked).
 * - Errors (each a `Blip2Error` saying what to do): `EngineOptionsError`, `MatMulUnavailableError`,
 *   `EngineStartError`, `TfjsVersionError`, `KernelInputError`, `KernelUnavailableError`, `GradientError`,
 *   `WasmHeapExhaustedError`.
 * - Model-facing ops (same numbers on every backend as the composed tfjs ops, within the bounds the tests state):
 *   `linear`, `layerNorm`, `gelu`, `multiHeadAttention`, `crossEntropyRows`, `splitHeads`, `mergeHeads`; `gradients`
 *   (reverse mode that frees memory as it goes).
 *
 * Test-only and benchmark-only: `engineTesting` (last export) and the `stockWasm` start option; not for production code.
 */
export {
  tf,
  initEngine,
  engineName,
  engineInfo,
  engineThreads,
  widenF16Into,
  resolveEngineOptions,
  engineOptionsFromConfig,
  type EngineName,
  type EngineMatMul,
  type EngineInfo,
  type EngineOptions,
  type ResolvedEngineOptions,
} from './start';
export { WasmHeapExhaustedError } from './wasm-backend';
export {
  EngineOptionsError,
  EngineStartError,
  GradientError,
  KernelInputError,
  KernelUnavailableError,
  MatMulUnavailableError,
  TfjsVersionError,
} from './errors';
export { gradients } from './gradients';
export { crossEntropyRows, gelu, layerNorm, linear, mergeHeads, multiHeadAttention, splitHeads } from './ops';
export { engineTesting } from './testing';
