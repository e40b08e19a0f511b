/**
 * The ops the model calls that tfjs does not have as one op: LayerNorm, exact-erf GELU, multi-head attention and
 * label-smoothed cross-entropy (plus the head split/merge reshapes). Each is one function whatever the backend: on
 * `wasm` with the native addon it runs the fused kernels registered by wasm-fused.ts (Blip2LayerNorm, Blip2Gelu,
 * Blip2HeadScores/Blip2HeadContext, Blip2CrossEntropy and their gradients); on every other backend, the same
 * function composed of tfjs ops with a hand-written gradient. The choice is made here, per call, from what the
 * engine installed at start; model code never sees it. A Linear layer over rows is `linear`: on wasm with the addon
 * the `_FusedMatMul` kernel, which the engine overrides with one GEMM written over the bias, and whose gradient keeps
 * only x and w (tfjs's own `tf.fused.matMul` keeps its output too, until backward: +0.5 GiB of the 4 GiB wasm heap
 * at the BERT-base step, batch 8); elsewhere matMul then add.
 */
// tfjs-core's Node bundle registers no gradients (the @tensorflow/tfjs bundle does). Register the stock ones here so
// the ops differentiate on any backend, before or without `initEngine`.
import '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs-core';
import { fusedOps } from './wasm-fused';

/** torch.nn.Linear on rows: x [N, in], w [out, in], b [out] -> x·wᵀ + b. */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  const fused = fusedOps();
  if (fused && b && b.rank === 1 && x.shape[0] > 0) return fused.linear(x, w, b);
  const y = tf.matMul(x, w, false, true); // [N, out]
  return (b ? tf.add(y, b) : y) as tf.Tensor2D;
}

/**
 * torch.nn.LayerNorm over the last axis (biased variance, eps inside the square root); gamma, beta [C]. The
 * gradient is hand-written: the tape keeps only x̂ and 1/σ instead of every intermediate, which bounds training
 * memory (the wasm heap is 4 GiB) and runs far fewer element-wise kernels. dx = (g - mean(g) - x̂·mean(g·x̂))/σ with
 * g = dy·γ.
 */
export function layerNorm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor {
  const fused = fusedOps();
  if (fused) return fused.layerNorm(x, gamma, beta, eps);
  return composedLayerNorm(eps)(x, gamma, beta);
}

type LayerNormFn = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor;
const layerNormOps = new Map<number, LayerNormFn>();
function composedLayerNorm(eps: number): LayerNormFn {
  let op = layerNormOps.get(eps);
  if (op) return op;
  op = tf.customGrad(((x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, save: tf.GradSaveFunc) => {
    const axis = x.rank - 1;
    const [y, xhat, rstd] = tf.tidy(() => {
      const mean = tf.mean(x, axis, true);
      const xc = tf.sub(x, mean);
      const variance = tf.mean(tf.square(xc), axis, true);
      const inv = tf.rsqrt(tf.add(variance, eps)); // [..., 1]
      const xh = tf.mul(xc, inv);
      return [tf.add(tf.mul(xh, gamma), beta), xh, inv];
    });
    save([xhat!, rstd!, gamma]);
    return {
      value: y!,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, inv, gm] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const lead = Array.from({ length: axis }, (_, i) => i);
        const g = tf.mul(dy, gm);
        const m1 = tf.mean(g, axis, true);
        const m2 = tf.mean(tf.mul(g, xh), axis, true);
        const dx = tf.mul(tf.sub(tf.sub(g, m1), tf.mul(xh, m2)), inv);
        return [dx, tf.sum(tf.mul(dy, xh), lead), tf.sum(dy, lead)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as LayerNormFn;
  layerNormOps.set(eps, op);
  return op;
}

/**
 * nn.GELU() / BERT "gelu": the exact erf form, 0.5·x·(1 + erf(x/√2)). Hand-written gradient
 * Φ(x) + x·φ(x) = 0.5·(1 + erf(x/√2)) + x·exp(-x²/2)/√(2π), so the tape keeps x alone.
 */
export function gelu(x: tf.Tensor): tf.Tensor {
  const fused = fusedOps();
  return fused ? fused.gelu(x) : composedGelu(x);
}

const composedGelu = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  const y = tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
  save([x]);
  return {
    value: y,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const xs = saved[0]!;
      const cdf = tf.mul(tf.add(tf.erf(tf.mul(xs, Math.SQRT1_2)), 1), 0.5);
      const pdf = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), 1 / Math.sqrt(2 * Math.PI));
      return tf.mul(dy, tf.add(cdf, tf.mul(xs, pdf)));
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/** [B, S, H] -> [B, heads, S, H/heads] */
export function splitHeads(x: tf.Tensor, numHeads: number): tf.Tensor4D {
  const [b, s, h] = x.shape as [number, number, number];
  return tf.transpose(tf.reshape(x, [b, s, numHeads, h / numHeads]), [0, 2, 1, 3]) as tf.Tensor4D;
}

/** [B, heads, S, d] -> [B, S, heads·d] */
export function mergeHeads(x: tf.Tensor): tf.Tensor3D {
  const [b, n, s, d] = x.shape as [number, number, number, number];
  return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b, s, n * d]) as tf.Tensor3D;
}

/**
 * Scaled dot-product attention over `numHeads` heads. q [B,Sq,H], k/v [B,Sk,H] (or already split into heads,
 * [B,n,Sk,d]); `additiveMask` broadcasts to [B,1,Sq,Sk] (0 or -10000; a constant: no gradient). Scores are
 * (q·kᵀ)/sqrt(d) + mask, as BertSelfAttention. Returns [B,Sq,H].
 */
export function multiHeadAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, numHeads: number, additiveMask?: tf.Tensor): tf.Tensor3D {
  const fused = fusedOps();
  const d = q.shape[2]! / numHeads;
  // Heads as column blocks of [B,S,H] on the addon (no split/merge transposes), when scaling by 1/√d is exact
  // (√d a power of two: d = 64 in BERT-base and the small preset), so the numbers are those of the path below.
  if (fused && q.rank === 3 && Number.isInteger(Math.log2(Math.sqrt(d))) && k.shape[0] === q.shape[0] && v.shape[0] === q.shape[0]) {
    return fused.attention(q as tf.Tensor3D, k, v, numHeads, 1 / Math.sqrt(d), additiveMask);
  }
  const qh = splitHeads(q, numHeads); // [B,n,Sq,d]
  const kh = k.rank === 4 ? (k as tf.Tensor4D) : splitHeads(k, numHeads); // [B,n,Sk,d] (given split, or split here)
  const vh = v.rank === 4 ? (v as tf.Tensor4D) : splitHeads(v, numHeads); // [B,n,Sk,d]
  const scale = Math.sqrt(qh.shape[3]);
  // When sqrt(d) is a power of two (d = 64: BERT-base and the small preset), dividing q first is bit-identical to
  // dividing the scores and touches a [B,n,Sq,d] tensor instead of [B,n,Sq,Sk].
  const exact = Number.isInteger(Math.log2(scale));
  let scores = exact ? tf.matMul(tf.div(qh, scale), kh, false, true) : tf.div(tf.matMul(qh, kh, false, true), scale); // [B,n,Sq,Sk]
  if (additiveMask) scores = tf.add(scores, additiveMask);
  const probs = tf.softmax(scores); // [B,n,Sq,Sk]
  return mergeHeads(tf.matMul(probs, vh)); // [B,Sq,H]
}

/**
 * Per-row torch cross_entropy with label smoothing ε (before the reduction):
 * (1-ε)·(-log p_target) + ε·mean_c(-log p_c), times the row weight. logits [N,C] float32, targets [N] int32,
 * weights [N] (1 = counted, 0 = ignored; constants: no gradient flows to them). Returns [N].
 */
export function crossEntropyRows(logits: tf.Tensor2D, targets: tf.Tensor1D, smoothing: number, rowWeights?: tf.Tensor1D): tf.Tensor1D {
  const fused = fusedOps();
  if (fused && targets.dtype === 'int32') return fused.crossEntropyRows(logits, targets, smoothing, rowWeights);
  const logp = tf.logSoftmax(logits); // [N,C]
  const classes = logits.shape[1];
  const nll = tf.neg(tf.sum(tf.mul(logp, tf.cast(tf.oneHot(targets, classes), 'float32')), 1)); // [N]
  let rows = nll;
  if (smoothing > 0) rows = tf.add(tf.mul(nll, 1 - smoothing), tf.mul(tf.neg(tf.mean(logp, 1)), smoothing)); // [N]
  if (rowWeights) rows = tf.mul(rows, rowWeights);
  return rows as tf.Tensor1D;
}
