import { beforeAll, describe, expect, test } from 'vitest';
import { attention, gelu, initEngine, layerNorm, splitHeads, mergeHeads, tf } from './index';

beforeAll(async () => {
  await initEngine();
});

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);

describe('layers', () => {
  test('LayerNorm and GELU hand-written gradients match automatic differentiation of the plain formulas', () => {
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const x = tf.randomNormal([3, 5, 16], 0, 2, 'float32', 1);
      const w = tf.randomNormal([16], 1, 0.1, 'float32', 2);
      const b = tf.randomNormal([16], 0, 0.1, 'float32', 3);
      const up = tf.randomNormal([3, 5, 16], 0, 1, 'float32', 4);
      const params = new Map([['ln.weight', w], ['ln.bias', b]]);
      const plainLn = (xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor) => {
        const mean = tf.mean(xi, -1, true);
        const xc = tf.sub(xi, mean);
        return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), 1e-5))), wi), bi);
      };
      const ours = tf.grads((xi, wi, bi) => tf.sum(tf.mul(layerNorm(new Map([['ln.weight', wi!], ['ln.bias', bi!]]), 'ln', xi!, 1e-5), up)))([x, w, b]);
      const ref = tf.grads((xi, wi, bi) => tf.sum(tf.mul(plainLn(xi!, wi!, bi!), up)))([x, w, b]);
      ours.forEach((g, i) => expect(maxAbsDiff(g, ref[i]!)).toBeLessThan(1e-5));
      expect(maxAbsDiff(layerNorm(params, 'ln', x, 1e-5), plainLn(x, w, b))).toBe(0);
      const plainGelu = (xi: tf.Tensor) => tf.mul(tf.mul(xi, 0.5), tf.add(tf.erf(tf.mul(xi, Math.SQRT1_2)), 1));
      expect(maxAbsDiff(gelu(x), plainGelu(x))).toBe(0);
      const g1 = tf.grad((xi) => tf.sum(tf.mul(gelu(xi), up)))(x);
      const g2 = tf.grad((xi) => tf.sum(tf.mul(plainGelu(xi), up)))(x);
      expect(maxAbsDiff(g1, g2)).toBeLessThan(1e-5);
    });
    expect(tf.memory().numTensors).toBe(before);
  });

  test('attention with head dim 64 scales q, bit-identical to scaling the scores', () => {
    tf.tidy(() => {
      const q = tf.randomNormal([2, 5, 128], 0, 1, 'float32', 5);
      const k = tf.randomNormal([2, 7, 128], 0, 1, 'float32', 6);
      const v = tf.randomNormal([2, 7, 128], 0, 1, 'float32', 7);
      const ours = attention(q, k, v, 2);
      const scores = tf.div(tf.matMul(splitHeads(q, 2), splitHeads(k, 2), false, true), 8);
      const ref = mergeHeads(tf.matMul(tf.softmax(scores), splitHeads(v, 2)));
      expect(maxAbsDiff(ours, ref)).toBe(0);
    });
  });
});
