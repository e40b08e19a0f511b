// Kernels added to or fixed on wasm: UnsortedSegmentSum (gather gradient) and float32 OneHot.
import { beforeAll, expect, test } from 'vitest';
import '@tensorflow/tfjs-backend-cpu';
import { initEngine, tf } from './index';

beforeAll(async () => {
  expect(await initEngine({ engine: 'wasm' })).toBe('wasm');
});

async function onBoth<T>(f: () => Promise<T>): Promise<[T, T]> {
  const wasm = await f();
  await tf.setBackend('cpu');
  const cpu = await f();
  await tf.setBackend('wasm');
  return [wasm, cpu];
}

test('wasm has an UnsortedSegmentSum kernel', () => {
  expect(tf.getKernel(tf.UnsortedSegmentSum, 'wasm')).toBeDefined();
});

test('unsortedSegmentSum equals the cpu backend: repeated, missing and out-of-range ids, int32', async () => {
  const x = tf.randomNormal([6, 3, 2], 0, 1, 'float32', 1);
  const ids1 = tf.tensor1d([2, 0, 2, 5, -1, 2], 'int32');
  const x2 = tf.randomNormal([5, 4], 0, 1, 'float32', 2);
  const ids2 = tf.tensor1d([3, 0, 9, 3, 3], 'int32');
  const xi = tf.tensor2d([[1, 2], [3, 4], [5, 6]], [3, 2], 'int32');
  const idsi = tf.tensor1d([1, 1, 0], 'int32');
  const [wasm, cpu] = await onBoth(async () => {
    const before = tf.memory().numTensors;
    const outs = [
      tf.unsortedSegmentSum(x, ids1, 4),
      tf.unsortedSegmentSum(x2, ids2, 4),
      tf.unsortedSegmentSum(xi, idsi, 3),
    ];
    const data = await Promise.all(outs.map(async (o) => ({ shape: o.shape, dtype: o.dtype, values: Array.from(await o.data()) })));
    tf.dispose(outs);
    expect(tf.memory().numTensors).toBe(before);
    return data;
  });
  expect(wasm.map((o) => o.shape)).toEqual(cpu.map((o) => o.shape));
  // The cpu kernel returns float32 for int32 input; ours keeps the input's dtype, as TensorFlow does.
  expect(wasm.map((o) => o.dtype)).toEqual(['float32', 'float32', 'int32']);
  for (let i = 0; i < cpu.length; i++) {
    wasm[i]!.values.forEach((v, j) => expect(v).toBeCloseTo(cpu[i]!.values[j]!, 5));
  }
  expect(wasm[2]!.values).toEqual([5, 6, 4, 6, 0, 0]);
  tf.dispose([x, ids1, x2, ids2, xi, idsi]);
});

test('the gradient of an embedding lookup (gather) equals the cpu backend', async () => {
  const table = tf.randomNormal([50, 8], 0, 1, 'float32', 3);
  const ids = tf.tensor2d([[1, 7, 7, 49], [0, 1, 2, 7]], [2, 4], 'int32');
  const w = tf.randomNormal([2, 4, 8], 0, 1, 'float32', 4);
  const [wasm, cpu] = await onBoth(async () => {
    const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), w)))(table);
    const values = Array.from(await g.data());
    const gathered = tf.gather(table, ids); // [2, 4, 8], rows copied on the addon
    values.push(...(await gathered.data()));
    tf.dispose([g, gathered]);
    return values;
  });
  expect(wasm.length).toBe(50 * 8 + 2 * 4 * 8);
  expect(wasm.slice(400)).toEqual(cpu.slice(400));
  expect(() => tf.gather(table, tf.tensor1d([50], 'int32'))).toThrow(/out of range|not in \[0, 49\]/);
  wasm.forEach((v, j) => expect(v).toBeCloseTo(cpu[j]!, 5));
  expect(wasm.slice(7 * 8, 8 * 8).some((v) => v !== 0)).toBe(true);
  tf.dispose([table, ids, w]);
});

test('rejects segment ids that are not a prefix of x', () => {
  const x = tf.zeros([3, 2]);
  const ids = tf.tensor1d([0, 1], 'int32');
  expect(() => tf.unsortedSegmentSum(x, ids, 2)).toThrow();
  tf.dispose([x, ids]);
});

test('oneHot with a float32 output and fractional on/off values equals the cpu backend (stock wasm writes int bits)', async () => {
  const ids = tf.tensor2d([[0, 3], [-1, 2]], [2, 2], 'int32');
  const [wasm, cpu] = await onBoth(async () => {
    const outs = [tf.oneHot(ids, 4, 0.9, 0.025, 'float32'), tf.oneHot(ids, 4), tf.oneHot(ids, 4, 1, 0, 'float32')];
    const res = await Promise.all(outs.map(async (o) => ({ dtype: o.dtype, values: Array.from(await o.data()) })));
    tf.dispose(outs);
    return res;
  });
  expect(wasm.map((o) => o.dtype)).toEqual(['float32', 'int32', 'float32']);
  expect(wasm[2]!.values).toEqual([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]);
  for (let i = 0; i < 3; i++) wasm[i]!.values.forEach((v, j) => expect(v).toBeCloseTo(cpu[i]!.values[j]!, 6));
  ids.dispose();
});

test('Add on the addon (same shape, broadcasts over leading or middle axes, either side) and Transpose by moving size-1 axes equal the cpu backend bit for bit', async () => {
  const pairs: [number[], number[]][] = [
    [[300, 257], [257]], // bias, enough elements for the threaded path
    [[7], [3, 5, 7]], // small on the left
    [[4, 32, 16], [1, 32, 16]], // the query-token broadcast
    [[123, 456], [123, 456]], // same shape
    [[5, 3, 4, 7], [5, 1, 4, 7]], // attention mask over heads
    [[5, 3, 4, 7], [5, 1, 1, 7]], // key mask over heads and query rows
    [[1, 9], [9]],
    [[4, 1, 6], [4, 1, 6]],
    [[6, 5], [6, 1]], // not a trailing broadcast: stock kernel
    [[2, 3, 4], [1, 3, 1]], // stock kernel
    [[2, 3], []], // scalar: stock kernel
  ];
  const inputs = pairs.map(([sa, sb], i) => [tf.randomNormal(sa, 0, 1, 'float32', 10 + i), tf.randomNormal(sb, 0, 1, 'float32', 20 + i)] as const);
  const x = tf.randomNormal([3, 1, 4, 1], 0, 1, 'float32', 30);
  const [wasm, cpu] = await onBoth(async () => {
    const sums = inputs.map(([a, b]) => tf.add(a, b));
    const out = [...sums.map((s) => ({ shape: s.shape, data: Array.from(s.dataSync()) }))];
    const moved = tf.transpose(x, [1, 0, 3, 2]); // only size-1 axes change places: shares the data
    const real = tf.transpose(x, [2, 0, 1, 3]); // a real transpose
    out.push({ shape: moved.shape, data: Array.from(moved.dataSync()) }, { shape: real.shape, data: Array.from(real.dataSync()) });
    tf.dispose([...sums, moved, real]);
    return out;
  });
  expect(wasm).toEqual(cpu);
  tf.dispose([...inputs.flat(), x]);
});

test('an allocation the 4 GiB wasm heap cannot hold fails with a clear error, and the engine goes on', async () => {
  const { WasmHeapExhaustedError } = await import('./wasm-backend');
  const before = tf.memory().numTensors;
  // 4.4 GB: above what 32-bit wasm can address (unguarded, it would wrap around to a ~100 MB allocation)
  expect(() => tf.fill([1_100_000_000], 1)).toThrow(WasmHeapExhaustedError);
  expect(() => tf.fill([1_100_000_000], 1)).toThrow(/wasm heap exhausted: cannot allocate 4196 MiB.*Lower the batch size/);
  // two of 2.2 GB: the second cannot be had (malloc returns 0)
  const first = tf.fill([550_000_000], 0.5);
  expect(() => tf.fill([550_000_000], 1)).toThrow(WasmHeapExhaustedError);
  first.dispose();
  expect(tf.memory().numTensors).toBe(before);
  const t = tf.add(tf.ones([1000]), 1);
  expect(t.dataSync()[999]).toBe(2);
  t.dispose();
});

test('Slice, SplitV and PadV2 copy only what they must, equal to the cpu backend (float32, int32, bool; every axis)', async () => {
  const x = tf.randomNormal([3, 5, 4, 6], 0, 1, 'float32', 40);
  const xi = tf.tensor3d(Array.from({ length: 60 }, (_, i) => i - 7), [3, 4, 5], 'int32');
  const xb = tf.tensor2d(Array.from({ length: 12 }, (_, i) => i % 3 === 0), [3, 4], 'bool');
  const [wasm, cpu] = await onBoth(async () => {
    const out = [
      tf.slice(x, [1, 0, 0, 0], [2, 5, 4, 6]), // whole trailing axes: one block
      tf.slice(x, [0, 2, 1, 0], [3, 2, 3, 6]),
      tf.slice(x, [0, 0, 0, 5], [3, 5, 4, 1]), // last axis only
      tf.slice(x, [2, 4, 3, 2], [1, 1, 1, 3]),
      tf.slice(x, [0, 1, 0, 0], [3, 0, 4, 6]), // empty
      tf.slice(xi, [1, 1, 2], [2, 3, 2]),
      tf.slice(xb, [1, 1], [2, 2]),
      ...tf.split(x, [1, 3, 1], 1),
      ...tf.split(x, 3, 0),
      ...tf.split(xi, [2, 3], 2),
      ...tf.split(x, [2, 4], 3),
      tf.pad(x, [[1, 0], [0, 2], [0, 0], [3, 1]], 0.5),
      tf.pad(x, [[0, 0], [0, 0], [1, 1], [0, 0]]),
      tf.pad(xi, [[2, 1], [0, 0], [0, 3]], -4),
    ];
    const values = out.map((t) => ({ dtype: t.dtype, shape: t.shape, data: Array.from(t.dataSync() as ArrayLike<number>) }));
    tf.dispose(out);
    return values;
  });
  expect(wasm).toEqual(cpu);
  tf.dispose([x, xi, xb]);
});

test('Softmax on the addon equals the cpu backend to float accuracy (masked rows of -10000 included)', async () => {
  const x = tf.add(tf.randomNormal([3, 4, 5, 33], 0, 4, 'float32', 50), tf.mul(tf.cast(tf.greater(tf.randomUniform([3, 1, 1, 33], 0, 1, 'float32', 51), 0.7), 'float32'), -10000));
  const [wasm, cpu] = await onBoth(async () => {
    const y = tf.softmax(x);
    const values = Array.from(y.dataSync());
    y.dispose();
    return values;
  });
  expect(wasm.length).toBe(cpu.length);
  // What the arithmetic allows, relative to each probability p (u = 2^-24, float's unit roundoff; n = 33 keys):
  //  - exp: ours is within 2 ulp ≤ 4u (the kernel's Cephes form), the cpu backend's Math.exp rounded to float 1u;
  //  - the sum of n positive terms: (n - 1)u on each side, and the two sides add in different orders (the addon's
  //    SIMD reduction depends on the vector width the compiler picked for the CPU it was built on);
  //  - the normalisation: ours multiplies by a rounded 1/Σ (2u), the cpu backend divides (1u).
  // x - max is the same float subtraction on both sides. Bound: (4 + 1 + 2(n - 1) + 3)u·p = (2n + 6)u·p.
  const u = 2 ** -24;
  const n = x.shape[3]!;
  const over = wasm.map((v, i) => ({ i, err: Math.abs(v - cpu[i]!), bound: (2 * n + 6) * u * cpu[i]! })).filter((e) => e.err > e.bound);
  expect(over.slice(0, 5)).toEqual([]);
  // masked keys get exact zeros, never denormals (which slow every matmul they reach by ~10×)
  expect(wasm.filter((v) => v !== 0 && Math.abs(v) < 1.17549435e-38)).toEqual([]);
  expect(wasm.filter((v) => v === 0).length).toBeGreaterThan(100);
  x.dispose();
});
