// Starting the engine: option checks, the wasm thread count beyond the stock cap, one start per process, process exit.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { expect, test } from 'vitest';
import { Blip2Error } from '../../common';
import {
  EngineOptionsError,
  engineOptionsFromConfig,
  engineInfo,
  engineName,
  engineThreads,
  initEngine,
  resolveEngineOptions,
  tf,
} from './index';
import { WASM_MAX_THREADS, wasmWorkersStarted } from './wasm-threads';

// The stock backend caps its pool at half the logical cores; ask for one more than that to show the cap is gone.
const stockCap = Math.max(1, Math.floor(os.cpus().length / 2));
const threads = Math.min(WASM_MAX_THREADS, stockCap + 1);

test('engine options: defaults, and bad values rejected before anything starts, naming the value', async () => {
  const defaults = resolveEngineOptions({ engine: 'wasm' });
  expect(defaults.threads).toBe(Math.min(WASM_MAX_THREADS, os.availableParallelism()));
  expect(defaults.matmulThreads).toBe(defaults.threads);
  expect(defaults.wasmThreads).toBeUndefined(); // decided at start: 1 with the addon, else threads
  expect(() => resolveEngineOptions({ wasmThreads: 9 })).toThrow(/wasmThreads must be an integer in 1…8, got 9/);
  expect(defaults.matmul).toBe('auto');
  expect(() => resolveEngineOptions({ threads: 0 })).toThrow(/threads must be an integer in 1…8, got 0/);
  expect(() => resolveEngineOptions({ threads: 2.5 })).toThrow(EngineOptionsError);
  expect(() => resolveEngineOptions({ matmul: 'mkl' as 'auto' })).toThrow(/matmul must be .* got "mkl"/);
  expect(() => resolveEngineOptions({ engine: 'webgl' as 'auto' })).toThrow(/got "webgl"/);
  expect(() => resolveEngineOptions({ matmulThreads: 65 })).toThrow(/matmulThreads .* got 65/);
  await expect(initEngine({ engine: 'wasm', threads: 99 })).rejects.toThrow(/got 99/);
  expect(() => resolveEngineOptions({ threads: 0 })).toThrow(Blip2Error); // the project's base error
  expect(engineName()).toBeUndefined();
});

test('options from the job config: 0 threads leave the default to the engine', () => {
  expect(engineOptionsFromConfig({ backend: 'auto', threads: 0, matmul: 'auto', matmulThreads: 0, wasmThreads: 0 })).toEqual({
    engine: 'auto', threads: undefined, matmul: 'auto', matmulThreads: undefined, wasmThreads: undefined,
  });
  const options = engineOptionsFromConfig({ backend: 'wasm', threads: 2, matmul: 'openblas', matmulThreads: 4, wasmThreads: 1 });
  expect(resolveEngineOptions(options)).toEqual({ engine: 'wasm', threads: 2, stockWasm: false, matmul: 'openblas', matmulThreads: 4, wasmThreads: 1 });
});

test('the wasm engine runs the thread count asked for, beyond the stock half-the-cores cap', async () => {
  expect(engineName()).toBeUndefined();
  // Two concurrent first calls share one start-up.
  const [name, again] = await Promise.all([initEngine({ engine: 'wasm', threads, wasmThreads: threads }), initEngine({ engine: 'cpu' })]);
  expect(name).toBe('wasm');
  expect(again).toBe('wasm');
  expect(engineName()).toBe('wasm');
  expect(engineThreads()).toBe(threads);
  expect(['openblas', 'xnnpack']).toContain(engineInfo()?.matmul);
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  expect(wasm.getThreadsCount()).toBe(threads);
  // The pool's threads run on real workers (the caller is the first thread); the other pre-spawned ones stay idle.
  expect(wasmWorkersStarted()).toBe(threads - 1);
  expect(tf.getBackend()).toBe('wasm');
  // A second call keeps the engine already chosen.
  expect(await initEngine({ engine: 'cpu' })).toBe('wasm');
});

test('engine computes a matmul correctly and leaks no tensors', async () => {
  await initEngine({ engine: 'wasm', threads });
  const before = tf.memory().numTensors;
  const out = tf.tidy(() => tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]])));
  expect(Array.from(await out.data())).toEqual([19, 22, 43, 50]);
  out.dispose();
  expect(tf.memory().numTensors).toBe(before);
});

test('a large threaded matmul is correct (work split across the pool)', async () => {
  await initEngine({ engine: 'wasm', threads });
  const a = tf.randomUniform([300, 200], -1, 1, 'float32', 1);
  const b = tf.randomUniform([200, 100], -1, 1, 'float32', 2);
  const out = tf.matMul(a, b);
  const [av, bv, ov] = [a.dataSync(), b.dataSync(), out.dataSync()];
  for (const [i, j] of [[0, 0], [150, 50], [299, 99], [7, 93]] as const) {
    let want = 0;
    for (let k = 0; k < 200; k++) want += av[i * 200 + k]! * bv[k * 100 + j]!;
    expect(ov[i * 100 + j]).toBeCloseTo(want, 4);
  }
  tf.dispose([a, b, out]);
});

test('a process that used the threaded engine exits by itself (pool workers do not hold it)', () => {
  const script =
    "import { initEngine, tf } from './trainer/engine/index';" +
    "initEngine({ engine: 'wasm', threads: 2 }).then(() => { tf.matMul(tf.ones([200, 200]), tf.ones([200, 200])).dataSync(); });";
  const started = Date.now();
  const run = spawnSync('npx', ['tsx', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  expect(run.error, 'timed out: the process did not exit').toBeUndefined();
  expect(run.status, run.stderr).toBe(0);
  expect(Date.now() - started).toBeLessThan(60_000);
});
