// Linear, LayerNorm, GELU, attention and cross-entropy: the engine's fused paths against the composed tfjs ops, with bounds
// derived from the arithmetic, and leak checks.
import { beforeAll, describe, expect, test } from 'vitest';
import { attention, gelu, layerNorm, splitHeads, mergeHeads } from './index';
import { crossEntropySum, linear } from './layers';
import { engineTesting, initEngine, tf } from '../engine';

const { withoutFusedOps } = engineTesting;

beforeAll(async () => {
  await initEngine();
});

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);

describe('layers', () => {
  test('LayerNorm and GELU hand-written gradients match automatic differentiation of the plain formulas', () =>
    withoutFusedOps(() => {
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
  }));

  test('fused native GELU, LayerNorm, softmax gradient and cross-entropy equal the composed tfjs ops', () => {
    expect(engineTesting.fusedOpsActive(), 'the engine installs the fused kernels when the native addon is built').toBe(true);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const x = tf.randomNormal([5, 7, 48], 0, 3, 'float32', 11); // GELU inputs spanning ±9
      const w = tf.randomNormal([48], 1, 0.2, 'float32', 12);
      const b = tf.randomNormal([48], 0, 0.2, 'float32', 13);
      const up = tf.randomNormal([5, 7, 48], 0, 1, 'float32', 14);
      const logits = tf.mul(tf.randomNormal([9, 301], 0, 1, 'float32', 15), 6) as tf.Tensor2D;
      const targets = tf.tensor1d([0, 300, 5, 17, 299, 1, 150, 2, 3], 'int32');
      const rowWeights = tf.tensor1d([1, 0, 1, 1, 0.5, 1, 1, 0, 1]);
      const fn = (xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor, li: tf.Tensor) => {
        const params = new Map([['ln.weight', wi], ['ln.bias', bi]]);
        const h = layerNorm(params, 'ln', gelu(xi), 1e-12);
        const attn = tf.softmax(tf.reshape(h, [35, 48]));
        return tf.addN([
          tf.sum(tf.mul(h, up)),
          tf.sum(tf.mul(attn, tf.reshape(up, [35, 48]))),
          crossEntropySum(li as tf.Tensor2D, targets, 0.1, rowWeights),
          crossEntropySum(li as tf.Tensor2D, targets, 0),
        ]);
      };
      const fused = tf.valueAndGrads(fn)([x, w, b, logits]);
      const composed = withoutFusedOps(() => tf.valueAndGrads(fn)([x, w, b, logits]));
      // Error relative to the largest term (ulps of the largest term; u = 2^-24). The two sides evaluate erf, exp and
      // the row sums of LayerNorm (48 terms), softmax (48) and the cross-entropy's log-sum-exp (301 classes)
      // differently (approximations within 4 ulp; sums in different orders, (n - 1)u each). The value chains GELU →
      // LayerNorm → softmax, or the 301-term log-sum-exp: ≤ 2·(4 + 2·48 + 48 + 4)u ≈ 300u ≈ 1.8e-5 relative on the
      // larger side; measured ≈ 1e-7. Gradients add the backward's own row sums of the same lengths: twice that.
      const u = 2 ** -24;
      const rel = (a: tf.Tensor, r: tf.Tensor) => maxAbsDiff(a, r) / Math.max(1e-30, tf.max(tf.abs(r)).dataSync()[0]!);
      expect(rel(fused.value, composed.value) / u).toBeLessThan(2 * (4 + 2 * 301 + 4));
      fused.grads.forEach((g, i) => expect(rel(g, composed.grads[i]!) / u, `gradient ${i}`).toBeLessThan(4 * (4 + 2 * 301 + 4)));
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

  test('the fused Linear (bias written first, GEMM adds to it) equals matmul + add, values and gradients bit for bit', () => {
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const x = tf.randomNormal([3, 37, 48], 0, 1, 'float32', 21);
      const w = tf.randomNormal([40, 48], 0, 0.2, 'float32', 22);
      const b = tf.randomNormal([40], 0, 0.5, 'float32', 23);
      const up = tf.randomNormal([3, 37, 40], 0, 1, 'float32', 24);
      const fn = (xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor) => tf.sum(tf.mul(linear(new Map([['l.weight', wi], ['l.bias', bi]]), 'l', xi), up));
      const fused = tf.grads(fn)([x, w, b]);
      const composed = withoutFusedOps(() => tf.grads(fn)([x, w, b]));
      const params = new Map([['l.weight', w], ['l.bias', b]]);
      expect(Array.from(linear(params, 'l', x).dataSync())).toEqual(Array.from(withoutFusedOps(() => linear(params, 'l', x)).dataSync()));
      fused.forEach((g, i) => expect(Array.from(g.dataSync()), `gradient ${i}`).toEqual(Array.from(composed[i]!.dataSync())));
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('fused attention', () => {
  test('heads as column blocks equal split-heads attention: values and gradients, [B,S,H] and pre-split keys/values, masked', () => {
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const B = 3, Sq = 5, Sk = 7, n = 2, d = 64, H = n * d;
      const q = tf.randomNormal([B, Sq, H], 0, 1, 'float32', 31);
      const k = tf.randomNormal([B, Sk, H], 0, 1, 'float32', 32);
      const v = tf.randomNormal([B, Sk, H], 0, 1, 'float32', 33);
      const kSplit = splitHeads(tf.randomNormal([B, Sk, H], 0, 1, 'float32', 34), n);
      const vSplit = splitHeads(tf.randomNormal([B, Sk, H], 0, 1, 'float32', 35), n);
      const mask = tf.mul(tf.cast(tf.greater(tf.randomUniform([B, 1, Sq, Sk], 0, 1, 'float32', 36), 0.7), 'float32'), -10000);
      const up = tf.randomNormal([B, Sq, H], 0, 1, 'float32', 37);
      const cases: [tf.Tensor, tf.Tensor, tf.Tensor | undefined][] = [[k, v, mask], [kSplit, vSplit, undefined], [k, v, undefined]];
      for (const [kk, vv, m] of cases) {
        const fn = (qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor) => tf.sum(tf.mul(attention(qi, ki, vi, n, m), up));
        const fused = tf.valueAndGrads(fn)([q, kk, vv]);
        const composed = withoutFusedOps(() => tf.valueAndGrads(fn)([q, kk, vv]));
        // Both sides compute the same products; the addon's strided GEMMs may add them in another order, and its
        // exp differs from the cpu one by ≤ 2 ulp. Per output element that is ≤ K·u of the largest term it chains
        // through (u = 2^-24): the score dot products (d terms), the softmax row (Sk terms, exp, division) and the
        // p·v dot product (Sk terms), once on each side: K = 2(d + 2·Sk + 6). The score error e passes through exp
        // as a relative error of p: e ≤ d·u·max|q·k|/√d. Gradients chain the same steps backwards plus the
        // softmax gradient's row sum (Sk) and the sum over query rows (Sq). The value is Σ up·out: its error is at
        // most Σ|up| times the per-element bound.
        const u = 2 ** -24;
        const maxOf = (t: tf.Tensor) => tf.max(tf.abs(t)).dataSync()[0]!;
        const scoreMag = d * maxOf(q) * maxOf(kk) / Math.sqrt(d); // bounds |q·k|/√d term by term
        const K = 2 * (d + 2 * Sk + 6) + 2 * d * scoreMag;
        const outBound = K * u * maxOf(vv);
        const out = attention(q, kk, vv, n, m);
        expect(maxAbsDiff(out, withoutFusedOps(() => attention(q, kk, vv, n, m)))).toBeLessThanOrEqual(outBound);
        expect(maxAbsDiff(fused.value, composed.value)).toBeLessThanOrEqual(tf.sum(tf.abs(up)).dataSync()[0]! * outBound);
        const Kg = K + 2 * (Sk + Sq);
        fused.grads.forEach((g, i) => expect(maxAbsDiff(g, composed.grads[i]!), `gradient ${i}`).toBeLessThanOrEqual(Kg * u * maxOf(composed.grads[i]!)));
      }
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});
