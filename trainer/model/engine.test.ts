import { expect, test } from 'vitest';
import { initEngine, tf } from './engine';

test('engine starts, computes a matmul correctly, and leaks no tensors', async () => {
  const name = await initEngine();
  expect(['tensorflow', 'wasm', 'cpu']).toContain(name);
  const before = tf.memory().numTensors;
  const out = tf.tidy(() => tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]])));
  expect(Array.from(await out.data())).toEqual([19, 22, 43, 50]);
  out.dispose();
  expect(tf.memory().numTensors).toBe(before);
});
