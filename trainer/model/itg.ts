/**
 * ITG, image-grounded text generation (BLIP-2 §3.2; LAVIS Blip2Qformer.forward, "Image-grounded Text Generation"):
 * the caption, with [DEC] in place of [CLS], is predicted token by token; each text token attends to every query
 * (the image's summary, keys/values cached from the ITC query pass) and to the text before it (causal mask), never
 * to the image directly. Label-smoothed cross-entropy of the next token, pads and the first token excluded.
 */
import type { Blip2Config } from './config';
import { tf } from '../engine';
import { maskTensor, type Pass } from './itc';
import { crossEntropySum, gelu, layerNorm, linear, param } from './layers';
import { itgMask, maskRows } from './masks';
import { embeddings, type KeyValue } from './qformer';
import type { Params } from './params';

/**
 * Number of ITG target tokens of a batch of ids ([rows, textLen] row-major): positions 1..T−1 that are not padding
 * (LAVIS masks labels by pad id). A rank's count, all-reduced, is the global normaliser `itgTokens`.
 */
export function itgTargetCount(inputIds: ArrayLike<number>, textLen: number, padTokenId: number): number {
  let n = 0;
  for (let i = 0; i < inputIds.length; i++) if (i % textLen !== 0 && inputIds[i] !== padTokenId) n++;
  return n;
}

/** ITG's decoder input and targets: [DEC] replaces [CLS]; target of row b, position t = token t+1 when not a pad. */
export interface ItgTargets {
  /** [B][T] ids with [DEC] first. */
  decIds: number[][];
  /** Flat row (b·T + t) of each target's position, and the target token. */
  rowIndex: number[];
  targets: number[];
}

export function itgTargets(config: Blip2Config, idRows: number[][]): ItgTargets {
  const q = config.qformer_config;
  const decIds = idRows.map((row) => row.map((v, j) => (j === 0 ? config.lavis_config.dec_token_id : v)));
  const rowIndex: number[] = [];
  const targets: number[] = [];
  decIds.forEach((row, b) => {
    for (let t = 0; t + 1 < row.length; t++) {
      if (row[t + 1] !== q.pad_token_id) {
        rowIndex.push(b * row.length + t);
        targets.push(row[t + 1]!);
      }
    }
  });
  return { decIds, rowIndex, targets };
}

/**
 * The ITG pass: the [DEC] text rows, causal over non-pad text, all queries visible. The queries' keys/values come
 * from the ITC query pass (`past`, or the lockstep stream it runs in), as LAVIS reuses its past_key_values.
 */
export function itgPass(p: Params, config: Blip2Config, decIds: number[][], attentionRows: number[][], past?: KeyValue[]): Pass {
  const Q = config.num_query_tokens;
  const T = decIds[0]?.length ?? 0;
  const ids = tf.tensor2d(decIds, [decIds.length, T], 'int32');
  const selfMask = maskTensor(maskRows(itgMask(attentionRows, Q), Q, Q + T)); // text rows [B,1,T,Q+T]
  return { h: embeddings(p, config, undefined, ids), queryLength: 0, selfMask, past }; // [B,T,H]
}

/** ITG head (BertOnlyMLMHead `cls`): dense -> gelu -> LayerNorm -> ·word_embeddingsᵀ + bias. x [N,H] -> [N,V]. */
export function lmHead(params: Params, config: Blip2Config, x: tf.Tensor2D): tf.Tensor2D {
  const t = layerNorm(params, 'cls.predictions.transform.LayerNorm', gelu(linear(params, 'cls.predictions.transform.dense', x)), config.qformer_config.layer_norm_eps);
  return tf.add(tf.matMul(t, param(params, 'embeddings.word_embeddings.weight'), false, true), param(params, 'cls.predictions.bias')) as tf.Tensor2D; // [N,V]
}

/**
 * The loss over the target rows only (the LM head runs on rows that have a target): Σ CE / `tokens` (the global
 * target count). out [B,T,H] is the ITG pass's last hidden state.
 */
export function itgLoss(p: Params, config: Blip2Config, out: tf.Tensor3D, t: ItgTargets, tokens: number): tf.Scalar {
  const [B, T, H] = out.shape;
  const flat = tf.reshape(out, [B * T, H]) as tf.Tensor2D;
  if (!t.targets.length) return tf.mul(tf.sum(flat), 0) as tf.Scalar;
  const rows = tf.gather(flat, tf.tensor1d(t.rowIndex, 'int32')) as tf.Tensor2D; // [M,H]
  const logits = lmHead(p, config, rows); // [M,V]
  const sum = crossEntropySum(logits, tf.tensor1d(t.targets, 'int32'), config.lavis_config.itg_label_smoothing);
  return tf.div(sum, Math.max(tokens, 1)) as tf.Scalar;
}
