/**
 * The tensor engine. Picks, in order: tfjs-node-gpu (CUDA) when it is installed and loads, else tfjs `wasm`
 * (XNNPACK, multi-threaded, with our fast MatMul and the kernels training needs), else tfjs `cpu`. The choice and
 * the thread count are logged and returned so that they can be exported as metric labels.
 * ../../../shared/docs/engine-notes.md has the measurements behind each choice (wasm is ~40× cpu on a Q-Former
 * layer); `npm run bench:engine` re-measures them.
 *
 * A process calls `await initEngine(options)` once, its options from the job config's `engine` section
 * (`engineOptionsFromConfig`; the engine reads no environment itself); model code then uses `tf` from the engine's
 * index: the fast kernels and gradients are registered with tfjs, so `tf.matMul`, `tf.gather`, `tf.grads` etc. use
 * them without knowing.
 */
import os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's Node bundle has no gradients; the @tensorflow/tfjs bundle registers them all (the same core instance).
import '@tensorflow/tfjs';
import { createLogger, type EngineConfig } from '../../common';
import { EngineOptionsError, EngineStartError, MatMulUnavailableError } from './errors';
import { installShapeOnlySaves } from './gradients';
import { loadNativeBlas, type NativeBlas } from './native-blas';
import { installWasmCpuFallbacks } from './wasm-cpu-fallback';
import { installWasmFused } from './wasm-fused';
import { installWasmIdentity } from './wasm-identity';
import { installWasmOneHot } from './wasm-one-hot';
import { installWasmSlice } from './wasm-slice';
import { batchMatMulGradConfig, installWasmMatMul } from './wasm-matmul';
import { installWasmSegmentSum } from './wasm-segment-sum';
import { installWasmSum } from './wasm-sum';
import { startThreadedWasm, WASM_MAX_THREADS } from './wasm-threads';
import { guardWasmAllocations, type WasmBackend } from './wasm-backend';

export { tf, EngineOptionsError, MatMulUnavailableError };
export type EngineName = 'tensorflow' | 'wasm' | 'cpu';

export interface EngineOptions {
  /** Which engine to use; `auto` (default) tries tensorflow, then wasm, then cpu. Job config: `engine.backend`. */
  engine?: EngineName | 'auto';
  /**
   * Threads for the wasm engine, 1…8; default: the number of CPU cores the process may use (capped at 8).
   * Job config: `engine.threads`.
   */
  threads?: number;
  /**
   * Use the stock tfjs wasm backend as shipped (one thread, stock MatMul, no added kernels); default false. Only for
   * benchmarks that need the baseline.
   */
  stockWasm?: boolean;
  /**
   * Matmul of the wasm engine: `openblas` (the native addon built by `npm run build:native`; an error when it is
   * missing), `xnnpack` (wasm), or `auto` (default): openblas when the addon loads, else xnnpack.
   * Job config: `engine.matmul`.
   */
  matmul?: 'auto' | EngineMatMul;
  /** Threads of the OpenBLAS matmul and the fused kernels, 1…64; default: `threads`. Job config: `engine.matmulThreads`. */
  matmulThreads?: number;
  /**
   * Threads of the wasm backend's own pool, 1…8; default: 1 when the native addon runs the matmuls and the heavy
   * element-wise kernels (the pool then only serves a few small kernels, and its idle workers cost more than they
   * give: measured 2–4% of a step), else `threads`. Job config: `engine.wasmThreads`.
   */
  wasmThreads?: number;
}

export type EngineMatMul = 'openblas' | 'xnnpack' | 'tensorflow' | 'cpu';

export interface EngineInfo {
  name: EngineName;
  /**
   * Threads the engine computes on (wasm with the addon: OpenBLAS and fused-kernel threads; wasm without: the
   * XNNPACK pool the backend reports; cpu: 1; tensorflow: its own).
   */
  threads: number;
  /** wasm: the backend's own thread pool. */
  wasmThreads?: number;
  /** What runs MatMul/BatchMatMul. */
  matmul: EngineMatMul;
}

const log = createLogger('engine');
let current: EngineInfo | undefined;
/** The native addon of the running wasm engine, for work outside tensors (`widenF16Into`). */
let nativeKernels: NativeBlas | undefined;
let starting: Promise<EngineName> | undefined;

function defaultThreads(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(WASM_MAX_THREADS, cores));
}

/** Engine options with defaults filled in and every value checked. */
export interface ResolvedEngineOptions {
  engine: EngineName | 'auto';
  threads: number;
  stockWasm: boolean;
  matmul: 'auto' | 'openblas' | 'xnnpack';
  matmulThreads: number;
  /** Undefined: decided when the engine starts (1 with the addon, else `threads`). */
  wasmThreads?: number;
}

export function resolveEngineOptions(options: EngineOptions = {}): ResolvedEngineOptions {
  const engine = options.engine ?? 'auto';
  if (!['auto', 'tensorflow', 'wasm', 'cpu'].includes(engine)) {
    throw new EngineOptionsError(`engine must be auto, tensorflow, wasm or cpu, got ${JSON.stringify(engine)}`);
  }
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > WASM_MAX_THREADS) {
    throw new EngineOptionsError(`engine threads must be an integer in 1…${WASM_MAX_THREADS}, got ${String(threads)}`);
  }
  const matmul = options.matmul ?? 'auto';
  if (!['auto', 'openblas', 'xnnpack'].includes(matmul)) {
    throw new EngineOptionsError(`engine matmul must be auto, openblas or xnnpack, got ${JSON.stringify(matmul)}`);
  }
  const matmulThreads = options.matmulThreads ?? threads;
  if (!Number.isInteger(matmulThreads) || matmulThreads < 1 || matmulThreads > 64) {
    throw new EngineOptionsError(`engine matmulThreads must be an integer in 1…64, got ${String(matmulThreads)}`);
  }
  const wasmThreads = options.wasmThreads;
  if (wasmThreads !== undefined && (!Number.isInteger(wasmThreads) || wasmThreads < 1 || wasmThreads > WASM_MAX_THREADS)) {
    throw new EngineOptionsError(`engine wasmThreads must be an integer in 1…${WASM_MAX_THREADS}, got ${String(wasmThreads)}`);
  }
  return {
    wasmThreads,
    engine,
    threads,
    stockWasm: options.stockWasm ?? false,
    matmul: matmul as ResolvedEngineOptions['matmul'],
    matmulThreads,
  };
}

/**
 * Start options from the job config's `engine` section (`loadJobConfig().config.engine`, or `engineConfigFromEnv()`
 * for a tool without a job config): a thread count of 0 there means the engine's default.
 */
export function engineOptionsFromConfig(config: EngineConfig): EngineOptions {
  const count = (n: number) => (n === 0 ? undefined : n);
  return {
    engine: config.backend,
    threads: count(config.threads),
    matmul: config.matmul,
    matmulThreads: count(config.matmulThreads),
    wasmThreads: count(config.wasmThreads),
  };
}

async function tryTensorflow(): Promise<EngineInfo | undefined> {
  try {
    await import('@tensorflow/tfjs-node-gpu' as string);
    if (!(await tf.setBackend('tensorflow'))) return undefined;
    return { name: 'tensorflow', threads: defaultThreads(), matmul: 'tensorflow' };
  } catch {
    return undefined;
  }
}


function chooseBlas(options: ResolvedEngineOptions): NativeBlas | undefined {
  if (options.matmul === 'xnnpack') return undefined;
  const { blas, reason } = loadNativeBlas(options.matmulThreads);
  if (!blas && options.matmul === 'openblas') {
    throw new MatMulUnavailableError(`matmul 'openblas' unavailable: ${reason}`);
  }
  if (!blas) log.info('native BLAS not used; matmul runs on wasm XNNPACK', { reason });
  return blas;
}

async function tryWasm(options: ResolvedEngineOptions): Promise<EngineInfo | undefined> {
  const { threads } = options;
  try {
    if (options.stockWasm) {
      await import('@tensorflow/tfjs-backend-wasm');
      if (!(await tf.setBackend('wasm'))) return undefined;
      const { getThreadsCount } = await import('@tensorflow/tfjs-backend-wasm');
      return { name: 'wasm', threads: getThreadsCount(), matmul: 'xnnpack' };
    }
    const blas = chooseBlas(options); // first: a missing addon that was asked for stops everything
    nativeKernels = blas && typeof blas.widenF16 === 'function' ? blas : undefined;
    const poolThreads = options.wasmThreads ?? (blas ? 1 : threads);
    const actual = await startThreadedWasm(poolThreads);
    if (actual !== poolThreads) {
      throw new EngineStartError(`the wasm backend runs ${actual} threads where ${poolThreads} were asked for`);
    }
    const backend = tf.backend() as unknown as WasmBackend;
    guardWasmAllocations(backend);
    installWasmMatMul(backend, blas);
    if (blas) {
      installWasmSum(blas);
      installWasmFused(blas);
    }
    installWasmSegmentSum(blas);
    installWasmIdentity();
    installWasmSlice();
    installWasmOneHot();
    installWasmCpuFallbacks();
    return { name: 'wasm', threads: blas ? options.matmulThreads : actual, wasmThreads: actual, matmul: blas ? 'openblas' : 'xnnpack' };
  } catch (e) {
    if (e instanceof MatMulUnavailableError) throw e;
    log.warn('wasm engine failed to start', { error: e instanceof Error ? e.message : String(e) });
    return undefined;
  }
}

async function tryCpu(): Promise<EngineInfo | undefined> {
  await import('@tensorflow/tfjs-backend-cpu');
  return (await tf.setBackend('cpu')) ? { name: 'cpu', threads: 1, matmul: 'cpu' } : undefined;
}

/**
 * Initialise the engine once per process; later calls return the engine already chosen. Bad options throw an
 * `EngineOptionsError` before anything starts; `matmul: 'openblas'` without the addon throws `MatMulUnavailableError`.
 */
export async function initEngine(options: EngineOptions = {}): Promise<EngineName> {
  if (current) return current.name;
  // Concurrent first calls share one start-up (a second would start the backend twice).
  starting ??= startEngine(options).finally(() => {
    starting = undefined;
  });
  return starting;
}

async function startEngine(options: EngineOptions): Promise<EngineName> {
  const resolved = resolveEngineOptions(options);
  // Our BatchMatMul gradient (broadcasting, batch folding) serves every engine, so that all compute alike; the
  // stock-wasm baseline keeps the stock one.
  if (!resolved.stockWasm) {
    tf.registerGradient(batchMatMulGradConfig);
    installShapeOnlySaves(); // the tape keeps shapes, not data, where a gradient needs only shapes
  }
  const order: EngineName[] = resolved.engine === 'auto' ? ['tensorflow', 'wasm', 'cpu'] : [resolved.engine];
  const tries: Record<EngineName, () => Promise<EngineInfo | undefined>> = {
    tensorflow: tryTensorflow,
    wasm: () => tryWasm(resolved),
    cpu: tryCpu,
  };
  for (const name of order) {
    const info = await tries[name]();
    if (info) {
      await tf.ready();
      current = info;
      log.info('tensor engine selected', { engine: info.name, threads: info.threads, matmul: info.matmul, ...(info.wasmThreads ? { wasmThreads: info.wasmThreads } : {}) });
      return info.name;
    }
  }
  throw new EngineStartError(`no tensor engine could be started (tried ${order.join(', ')}; see the warnings above)`);
}

/** The engine chosen by `initEngine`, or undefined before it. */
/**
 * Widens IEEE half bits to float32 into `dst` with the native addon (F16C where the CPU has it, on the kernels'
 * threads): true when it did, false when the running engine has no addon (the caller widens in JS).
 */
export function widenF16Into(src: Uint16Array, dst: Float32Array): boolean {
  if (!nativeKernels || dst.length < src.length) return false;
  nativeKernels.widenF16(src, dst, src.length);
  return true;
}

export function engineName(): EngineName | undefined {
  return current?.name;
}

/** Engine, thread count and matmul chosen by `initEngine`, or undefined before it (for metric labels and logs). */
export function engineInfo(): Readonly<EngineInfo> | undefined {
  return current;
}

/** The thread count of the engine chosen by `initEngine`, or undefined before it. */
export function engineThreads(): number | undefined {
  return current?.threads;
}
