/**
 * Building blocks shared by the ViT and the Q-Former. Weights stay in checkpoint layout ([out, in] for Linear). The
 * ops that tfjs lacks as one op (Linear over rows, LayerNorm, GELU, multi-head attention, label-smoothed
 * cross-entropy) come from the engine, which runs them on whatever backend it started.
 */
import { crossEntropyRows, gelu, layerNorm as layerNormOp, linear as linearRows, mergeHeads, multiHeadAttention, splitHeads, tf } from '../engine';
import { ModelInputError } from './errors';
import type { Params } from './params';

export { gelu, mergeHeads, splitHeads };

export function param(params: Params, name: string): tf.Tensor {
  const t = params.get(name);
  if (!t) throw new ModelInputError(`parameter "${name}" is not in this parameter set: load or create the parameters of this model's config`);
  return t;
}

/** torch.nn.Linear: y = x·Wᵀ + b over the last axis. x [..., in] -> [..., out]. */
export function linear(params: Params, prefix: string, x: tf.Tensor): tf.Tensor {
  const w = param(params, `${prefix}.weight`); // [out, in]
  const b = params.get(`${prefix}.bias`);
  const lead = x.shape.slice(0, -1);
  const x2 = tf.reshape(x, [-1, x.shape[x.shape.length - 1]!]); // [N, in]
  const y = linearRows(x2 as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D | undefined); // [N, out]
  return tf.reshape(y, [...lead, w.shape[0]!]);
}

/** torch.nn.LayerNorm over the last axis with the parameters `${prefix}.weight` and `${prefix}.bias`. */
export function layerNorm(params: Params, prefix: string, x: tf.Tensor, eps: number): tf.Tensor {
  return layerNormOp(x, param(params, `${prefix}.weight`), param(params, `${prefix}.bias`), eps);
}

/**
 * Scaled dot-product attention as BertSelfAttention. q [B,Sq,H], k/v [B,Sk,H] (or already split into heads,
 * [B,n,Sk,d]); `additiveMask` broadcasts to [B,1,Sq,Sk] (0 or -10000). Returns [B,Sq,H].
 */
export function attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, numHeads: number, additiveMask?: tf.Tensor): tf.Tensor3D {
  return multiHeadAttention(q, k, v, numHeads, additiveMask);
}

/** Row-wise L2 normalisation as F.normalize(dim=-1) (eps 1e-12 on the norm). */
export function l2normalize(x: tf.Tensor): tf.Tensor {
  const norm = tf.sqrt(tf.sum(tf.square(x), -1, true));
  return tf.div(x, tf.maximum(norm, 1e-12));
}

/**
 * Sum over rows of torch cross_entropy with label smoothing ε (before the mean):
 * (1-ε)·(-log p_target) + ε·mean_c(-log p_c). logits [N,C], targets int32 [N], weights [N] (1 = counted, 0 = ignored).
 */
export function crossEntropySum(logits: tf.Tensor2D, targets: tf.Tensor1D, smoothing: number, rowWeights?: tf.Tensor1D): tf.Scalar {
  return tf.sum(crossEntropyRows(logits, targets, smoothing, rowWeights)) as tf.Scalar;
}

/**
 * Gradient-blocking identity (torch `.detach()`): the value of x, with zero gradient. Used for the "gathered" side
 * of ITC at world size 1, which LAVIS takes from a no-grad all_gather.
 */
export const stopGradient = tf.customGrad(((x: tf.Tensor) => ({
  value: tf.mul(x, 1),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
})) as unknown as Parameters<typeof tf.customGrad>[0]) as (x: tf.Tensor) => tf.Tensor;
