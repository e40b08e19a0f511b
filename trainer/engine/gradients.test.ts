// The early-release backward (gradients.ts) against the engine's own: bit-identical gradients, memory falling as it goes.
import { beforeAll, describe, expect, test } from 'vitest';
import { gelu, initEngine, layerNorm, tf } from './index';
import { gradients } from './gradients';

beforeAll(async () => {
  await initEngine();
});

/**
 * A small network touching every kernel whose tape record keeps shapes only (Reshape, ExpandDims, Add and Sub with
 * broadcasting, Sum, Mean, Slice, PadV2, Concat), customGrad ops (LayerNorm, GELU), matmuls, a tensor used twice
 * and a parameter the output does not depend on.
 */
function network(w: tf.Tensor, b: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, x: tf.Tensor, layers: number): tf.Scalar {
  let h = x; // [4, 6, 8]
  for (let i = 0; i < layers; i++) {
    h = tf.tidy(() => layer(w, b, gamma, beta, h));
  }
  return tf.add(tf.sum(tf.mul(h, tf.expandDims(tf.sum(h, -1), -1))), tf.sum(h)) as tf.Scalar;
}

function layer(w: tf.Tensor, b: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, h: tf.Tensor): tf.Tensor {
    const proj = tf.add(tf.reshape(tf.matMul(tf.reshape(h, [24, 8]), w), [4, 6, 8]), b); // broadcast add
    const mixed = tf.sub(gelu(proj), tf.mean(proj, -1, true)); // broadcast sub, proj used twice
    const cat = tf.concat([tf.slice(mixed, [0, 0, 0], [4, 3, 8]), tf.pad(tf.slice(mixed, [0, 3, 0], [4, 3, 4]), [[0, 0], [0, 0], [0, 4]])], 1);
    return layerNorm(tf.add(cat, h), gamma, beta, 1e-5);
}

describe('gradients with early release', () => {
  const make = () => ({
    w: tf.randomNormal([8, 8], 0, 0.3, 'float32', 1),
    b: tf.randomNormal([8], 0, 0.1, 'float32', 2),
    gamma: tf.randomNormal([8], 1, 0.1, 'float32', 3),
    beta: tf.randomNormal([8], 0, 0.1, 'float32', 4),
    x: tf.randomNormal([4, 6, 8], 0, 1, 'float32', 5),
    unused: tf.zeros([3]),
  });

  test('bit-identical to the engine walk, undefined where y does not depend on x, nothing leaks', () => {
    const p = make();
    const xs = [p.w, p.b, p.gamma, p.beta, p.x, p.unused];
    const before = tf.memory().numTensors;
    const ours = gradients(() => network(p.w, p.b, p.gamma, p.beta, p.x, 3), xs);
    const ref = tf.engine().gradients(() => network(p.w, p.b, p.gamma, p.beta, p.x, 3), xs, undefined, true);
    expect(ours.value.dataSync()[0]).toBe(ref.value.dataSync()[0]);
    for (let i = 0; i < 5; i++) {
      expect(Array.from(ours.grads[i]!.dataSync())).toEqual(Array.from(ref.grads[i]!.dataSync()));
      expect(ours.grads[i]!.shape).toEqual(xs[i]!.shape);
    }
    expect(ours.grads[5]).toBeUndefined();
    expect(ref.grads[5]).toBeUndefined();
    tf.dispose([ours.value, ref.value, ...ours.grads.filter((g): g is tf.Tensor => !!g), ...ref.grads.filter((g): g is tf.Tensor => !!g)]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(p));
  });

  test('memory falls during backward: saved activations and used gradients are freed node by node', () => {
    const p = make();
    const xs = [p.w, p.b, p.gamma, p.beta, p.x];
    const bytes: number[] = [];
    const r = gradients(() => network(p.w, p.b, p.gamma, p.beta, p.x, 12), xs, { afterNode: () => bytes.push(tf.memory().numBytes) });
    // The engine's walk only grows here (it frees nothing before the end); ours ends at a fraction of its start.
    expect(bytes.length).toBeGreaterThan(100);
    expect(Math.max(...bytes)).toBeLessThanOrEqual(bytes[0]! * 1.05);
    expect(bytes.at(-1)!).toBeLessThan(bytes[0]! * 0.3);
    tf.dispose([r.value, ...r.grads.filter((g): g is tf.Tensor => !!g)]);
    tf.dispose(Object.values(p));
  });
});
