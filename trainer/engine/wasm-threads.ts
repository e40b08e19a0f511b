/**
 * Multi-threaded tfjs `wasm` under Node. tfjs-backend-wasm 4.22 ships a threaded XNNPACK build but never uses it
 * under Node (its WASM_HAS_MULTITHREAD_SUPPORT flag is false when IS_NODE; tfjs issue #3830), because:
 *   1. the pthread worker script is handed to Emscripten as a `blob:` URL, which `worker_threads.Worker` rejects;
 *   2. the main script a worker imports is a Blob too, read in the worker with `importScripts(URL.createObjectURL(…))`
 *      whose Node shim reads a *file*;
 *   3. that main script is the `toString()` of a function taken out of the Node bundle, so it refers to the bundle's
 *      module-scope names (`require$$0` = fs, `require$$1` = path, `require$$3` = perf_hooks, `require$$4` = os,
 *      `commonjsGlobal`), which do not exist in the worker;
 *   4. the C++ side caps the thread pool at `emscripten_num_logical_cores() / 2` (it assumes SMT), read once when the
 *      module starts, which is 1 on a 2-vCPU VM, and at 8 (the size of the pre-spawned worker pool);
 *   5. Emscripten pre-spawns and loads 8 workers whatever the thread count (~1.5 s and ~140 MB per process).
 * This module fixes each: Blobs built during initialisation remember their text; `URL.createObjectURL` writes that
 * text to a real file (content-addressed under the OS temp folder, so processes share it) and returns its path; the
 * worker file starts with a prelude that defines the missing names and maps its own `createObjectURL` to the main
 * script's file; `os.cpus()` reports 2·n cores while the module starts; the pool's workers are lazy stand-ins that
 * become real workers only when a thread first runs on them (n − 1 do). All of this is undone when initialisation
 * ends. It depends on tfjs internals, so the version is pinned (package.json) and a test checks the thread count.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Worker as NodeWorker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { EngineOptionsError, EngineStartError, TfjsVersionError } from './errors';

/** The most threads the backend can run: its pre-spawned pthread pool and its C++ cap (`max_num_threads`). */
export const WASM_MAX_THREADS = 8;
/** The tfjs version whose internals this shim was written against. */
export const WASM_SHIM_TFJS_VERSION = '4.22.0';

const MAIN_SCRIPT_PREFIX = 'var WasmBackendModuleThreadedSimd';

function writeOnce(dir: string, name: string, text: string): string {
  const file = path.join(dir, name);
  if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === text) return file;
  // Write-then-rename so that a second process never reads a half-written script.
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
  return file;
}

/**
 * A pre-spawned pthread worker that starts a real `worker_threads` Worker only when a thread is first run on it.
 * Emscripten posts `load` to every pool worker at start and waits for `loaded`; this answers at once and keeps the
 * `load` message. On the first other message (a `run`), it starts the real worker and posts it `load` then that
 * message, in that order and without waiting: the main thread may be blocked in `pthreadpool_create` until the
 * thread starts. The real worker's own `loaded` is not passed on (Emscripten counts one per worker).
 */
let workersStarted = 0;

/** How many real pthread workers this process started (the pool's threads: threads − 1). */
export function wasmWorkersStarted(): number {
  return workersStarted;
}

class LazyWorker extends EventEmitter {
  private real: NodeWorker | undefined;
  private load: unknown;
  private refed = true;
  private sawLoaded = false;

  constructor(
    private readonly file: string,
    private readonly RealWorker: typeof NodeWorker,
  ) {
    super();
  }

  postMessage(message: unknown, transfer?: readonly unknown[]): void {
    if (!this.real) {
      if ((message as { cmd?: string } | null)?.cmd === 'load') {
        this.load = message;
        setImmediate(() => this.emit('message', { cmd: 'loaded' }));
        return;
      }
      this.start();
    }
    this.real!.postMessage(message, transfer as never);
  }

  private start(): void {
    const real = new this.RealWorker(this.file);
    workersStarted++;
    real.on('message', (data: { cmd?: string } | null) => {
      if (data?.cmd === 'loaded' && !this.sawLoaded) {
        this.sawLoaded = true;
        return;
      }
      this.emit('message', data);
    });
    real.on('error', (e) => this.emit('error', e));
    real.on('exit', (code) => this.emit('exit', code));
    if (!this.refed) real.unref();
    real.postMessage(this.load);
    this.real = real;
  }

  ref(): void {
    this.refed = true;
    this.real?.ref();
  }

  unref(): void {
    this.refed = false;
    this.real?.unref();
  }

  terminate(): Promise<number> {
    return this.real ? this.real.terminate() : Promise.resolve(0);
  }
}

function hashOf(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}

/**
 * Starts tfjs `wasm` with `threads` pthreads (1…8) and makes it the active backend. Returns the thread count the
 * backend reports; the caller checks it. Must run before the wasm backend is first initialised in this process.
 */
export async function startThreadedWasm(threads: number): Promise<number> {
  if (!Number.isInteger(threads) || threads < 1 || threads > WASM_MAX_THREADS) {
    throw new EngineOptionsError(`wasm threads must be an integer in 1…${WASM_MAX_THREADS}, got ${threads}`);
  }
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  if (wasm.version_wasm !== WASM_SHIM_TFJS_VERSION) {
    throw new TfjsVersionError(
      `the wasm thread shim is written for @tensorflow/tfjs-backend-wasm ${WASM_SHIM_TFJS_VERSION}, ` +
        `found ${wasm.version_wasm}; pin it in package.json`,
    );
  }
  const dir = path.join(os.tmpdir(), `blip2-tfjs-wasm-${WASM_SHIM_TFJS_VERSION}`);
  fs.mkdirSync(dir, { recursive: true });

  const texts = new WeakMap<Blob, string>();
  let mainScript: string | undefined;
  const OriginalBlob = globalThis.Blob;
  class RecordingBlob extends OriginalBlob {
    constructor(parts: ConstructorParameters<typeof Blob>[0] = [], options?: ConstructorParameters<typeof Blob>[1]) {
      super(parts, options);
      if (parts && parts.every((p) => typeof p === 'string')) {
        const text = (parts as string[]).join('');
        texts.set(this, text);
        // The main script is created before the workers and reaches them as a Blob: write it now so that the
        // worker prelude can point at it.
        if (text.startsWith(MAIN_SCRIPT_PREFIX)) mainScript = writeOnce(dir, `main-${hashOf(text)}.cjs`, text);
      }
    }
  }
  const originalCreateObjectURL = URL.createObjectURL.bind(URL);
  const createObjectURL = (blob: Blob): string => {
    const text = texts.get(blob);
    if (text === undefined) return originalCreateObjectURL(blob);
    if (text.startsWith(MAIN_SCRIPT_PREFIX)) return mainScript!;
    if (mainScript === undefined) throw new TfjsVersionError('wasm thread shim: the worker script came before the main script');
    const prelude =
      "globalThis.commonjsGlobal = globalThis; globalThis.require$$0 = require('fs'); " +
      "globalThis.require$$1 = require('path'); globalThis.require$$3 = require('perf_hooks'); " +
      "globalThis.require$$4 = require('os'); " +
      `URL.createObjectURL = () => ${JSON.stringify(mainScript)}; URL.revokeObjectURL = () => {};\n`;
    const worker = prelude + text;
    return writeOnce(dir, `worker-${hashOf(worker)}.cjs`, worker);
  };
  const originalCpus = os.cpus;
  const cpus = originalCpus();
  const fakeCpus = () => Array.from({ length: 2 * threads }, (_, i) => cpus[i % cpus.length]!);

  // Emscripten assigns the global `Worker` (worker_threads') and then calls `new Worker(file)` for its pool: keep the
  // real class it assigns and hand out lazy stand-ins.
  const globals = globalThis as unknown as Record<string, unknown>;
  const workerDescriptor = Object.getOwnPropertyDescriptor(globals, 'Worker');
  let RealWorker: typeof NodeWorker | undefined;
  const lazyWorker = function (this: unknown, file: string) {
    if (!RealWorker) throw new TfjsVersionError('wasm thread shim: Worker used before Emscripten set it');
    return new LazyWorker(file, RealWorker);
  };

  globalThis.Blob = RecordingBlob as typeof Blob;
  URL.createObjectURL = createObjectURL;
  os.cpus = fakeCpus;
  Object.defineProperty(globals, 'Worker', {
    configurable: true,
    get: () => (RealWorker ? lazyWorker : undefined),
    set: (value: typeof NodeWorker) => {
      RealWorker = value;
    },
  });
  try {
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    wasm.setThreadsCount(threads);
    if (!(await tf.setBackend('wasm'))) throw new EngineStartError('tfjs could not start the threaded wasm backend');
    await tf.ready();
  } finally {
    globalThis.Blob = OriginalBlob;
    URL.createObjectURL = originalCreateObjectURL;
    os.cpus = originalCpus;
    if (workerDescriptor) Object.defineProperty(globals, 'Worker', workerDescriptor);
    else if (RealWorker) Object.defineProperty(globals, 'Worker', { value: RealWorker, writable: true, configurable: true });
    else delete globals.Worker;
  }
  // The pool's threads live as long as the backend and keep their workers ref'ed: a process that is done would
  // never exit. Unref them (the work they do is always awaited by the main thread).
  const pthreads = (tf.backend() as unknown as { wasm: { PThread?: PThreadTable } }).wasm.PThread;
  for (const worker of [...(pthreads?.runningWorkers ?? []), ...(pthreads?.unusedWorkers ?? [])]) worker.unref();
  return wasm.getThreadsCount();
}

interface PThreadTable {
  runningWorkers: { unref(): void }[];
  unusedWorkers: { unref(): void }[];
}
