// Sums over leading axes on the addon against the cpu backend.
import { beforeAll, expect, test } from 'vitest';
import { engineInfo, initEngine, tf } from './index';

beforeAll(async () => {
  expect(await initEngine({ engine: 'wasm' })).toBe('wasm');
});

test('sums over leading, inner, all and negative axes, with keepDims, equal the cpu backend', async () => {
  const x = tf.randomNormal([5, 4, 3], 0, 1, 'float32', 1);
  const xi = tf.tensor2d([[1, 2], [3, 4], [5, 6]], [3, 2], 'int32');
  const empty = tf.zeros([0, 3]);
  const cases: [tf.Tensor, number | number[], boolean][] = [
    [x, 0, false],
    [x, [0, 1], false],
    [x, [1, 0], true],
    [x, -3, true],
    [x, 1, false],
    [x, [0, 2], false],
    [x, [0, 1, 2], false],
    [xi, 0, false],
    [empty, 0, false],
  ];
  const run = async () => {
    const before = tf.memory().numTensors;
    const outs = cases.map(([t, axis, keepDims]) => tf.sum(t, axis, keepDims));
    const res = await Promise.all(outs.map(async (o) => ({ shape: o.shape, dtype: o.dtype, values: Array.from(await o.data()) })));
    tf.dispose(outs);
    expect(tf.memory().numTensors).toBe(before);
    return res;
  };
  const wasm = await run();
  await tf.setBackend('cpu');
  const cpu = await run();
  await tf.setBackend('wasm');
  for (let i = 0; i < cases.length; i++) {
    expect(wasm[i]!.shape, `case ${i}`).toEqual(cpu[i]!.shape);
    expect(wasm[i]!.dtype, `case ${i}`).toEqual(cpu[i]!.dtype);
    wasm[i]!.values.forEach((v, j) => expect(v, `case ${i}`).toBeCloseTo(cpu[i]!.values[j]!, 4));
  }
  expect(['openblas', 'xnnpack']).toContain(engineInfo()!.matmul);
  tf.dispose([x, xi, empty]);
});
