// Kernels wasm lacks, run on the cpu backend's kernels over the wasm tensors' data, against the cpu backend.
import { beforeAll, expect, test } from 'vitest';
import { initEngine, tf } from './index';
import { CPU_FALLBACK_KERNELS } from './wasm-cpu-fallback';

beforeAll(async () => {
  expect(await initEngine({ engine: 'wasm' })).toBe('wasm');
});

async function onBoth(f: () => tf.Tensor | tf.Tensor[]): Promise<[Float32Array[], Float32Array[]]> {
  const read = async () => {
    const before = tf.memory().numTensors;
    const out = tf.tidy(f);
    const list = Array.isArray(out) ? out : [out];
    const values = await Promise.all(list.map(async (t) => (await t.data()) as Float32Array));
    tf.dispose(list);
    expect(tf.memory().numTensors).toBe(before);
    return values;
  };
  const wasm = await read();
  await tf.setBackend('cpu');
  const cpu = await read();
  await tf.setBackend('wasm');
  return [wasm, cpu];
}

test('every kernel wasm lacks from the list is registered on wasm', () => {
  for (const name of CPU_FALLBACK_KERNELS) expect(tf.getKernel(name, 'wasm'), name).toBeDefined();
});

test('einsum runs on wasm and equals the cpu backend', async () => {
  const a = tf.randomNormal([2, 3, 4], 0, 1, 'float32', 1);
  const b = tf.randomNormal([2, 4, 5], 0, 1, 'float32', 2);
  const [wasm, cpu] = await onBoth(() => tf.einsum('bij,bjk->bik', a, b));
  expect(wasm[0]!.length).toBe(2 * 3 * 5);
  wasm[0]!.forEach((v, i) => expect(v).toBeCloseTo(cpu[0]![i]!, 5));
  tf.dispose([a, b]);
});

test('the filter gradient of a conv2d (a trainable patch embedding) equals the cpu backend', async () => {
  const x = tf.randomNormal([2, 8, 8, 3], 0, 1, 'float32', 3);
  const w = tf.randomNormal([4, 4, 3, 5], 0, 1, 'float32', 4);
  const [wasm, cpu] = await onBoth(() => {
    const loss = (xx: tf.Tensor, ww: tf.Tensor) =>
      tf.sum(tf.square(tf.conv2d(xx as tf.Tensor4D, ww as tf.Tensor4D, 4, 'valid'))); // 4×4 patches, stride 4
    const [dx, dw] = tf.grads(loss)([x, w]);
    return [dx!, dw!];
  });
  for (let i = 0; i < 2; i++) {
    expect(wasm[i]!.length).toBe(cpu[i]!.length);
    wasm[i]!.forEach((v, j) => expect(v).toBeCloseTo(cpu[i]![j]!, 3));
  }
  tf.dispose([x, w]);
});
