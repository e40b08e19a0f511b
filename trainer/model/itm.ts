/**
 * ITM, image-text matching (BLIP-2 §3.2; LAVIS Blip2Qformer.forward, "Image-text Matching"): queries and text
 * attend to each other (bidirectional mask); each of the 3B pairs [positive ; (negative image, text) ;
 * (image, negative text)] is classified matched or not from the mean of its query outputs. The negatives are hard:
 * drawn from the ITC similarities over the global batch, the positive excluded.
 */
import { uniformAt } from '../../common';
import type { Blip2Config } from './config';
import { tf } from '../engine';
import { ModelInputError } from './errors';
import { itcSimilarities, maskTensor, type Pass } from './itc';
import { crossEntropySum, linear } from './layers';
import { itmMask } from './masks';
import { embeddings, projectImage, qformerEncoder, queryTokens, selectImages, type HeadKeyValue } from './qformer';
import type { Params } from './params';

/**
 * Hard-negative distributions: softmax over columns with each row's positive (column offset+i) set to -10000. [B,N]
 * each. With one column (a global batch of one sample) there is no negative: the weights are all zero, and the step
 * forms no ITM pairs (see `stage1Step`).
 */
export function itmWeights(simI2t: tf.Tensor2D, simT2i: tf.Tensor2D, offset: number) {
  return tf.tidy(() => {
    const [b, n] = simI2t.shape;
    if (n <= 1) return { itmWeightsT2i: tf.zeros([b, n]) as tf.Tensor2D, itmWeightsI2t: tf.zeros([b, n]) as tf.Tensor2D };
    const pos = tf.cast(tf.oneHot(tf.range(offset, offset + b, 1, 'int32') as tf.Tensor1D, n), 'bool'); // [B,N]
    const fill = tf.fill([b, n], -10000);
    return {
      itmWeightsT2i: tf.softmax(tf.where(pos, fill, simT2i)) as tf.Tensor2D,
      itmWeightsI2t: tf.softmax(tf.where(pos, fill, simI2t)) as tf.Tensor2D,
    };
  });
}

/**
 * The same distributions from flat feature arrays (what the distributed step holds after its all-gather):
 * imageFeats [b,Q,E], textFeat [b,E], allImageFeats [B,Q,E], allTextFeat [B,E] -> t2i, i2t [b,B] each.
 */
export function itmSamplingWeights(
  feats: { imageFeats: Float32Array; textFeat: Float32Array; allImageFeats: Float32Array; allTextFeat: Float32Array },
  dims: { rows: number; globalBatch: number; numQueryTokens: number; embedDim: number }, temp: number, rankOffset: number,
): { t2i: Float32Array; i2t: Float32Array } {
  const { rows: b, globalBatch: B, numQueryTokens: Q, embedDim: E } = dims;
  return tf.tidy(() => {
    const { simI2t, simT2i } = itcSimilarities(temp, tf.tensor3d(feats.imageFeats, [b, Q, E]), tf.tensor2d(feats.textFeat, [b, E]),
      tf.tensor3d(feats.allImageFeats, [B, Q, E]), tf.tensor2d(feats.allTextFeat, [B, E]));
    const w = itmWeights(simI2t, simT2i, rankOffset);
    return { t2i: w.itmWeightsT2i.dataSync() as Float32Array, i2t: w.itmWeightsI2t.dataSync() as Float32Array };
  });
}

/**
 * Draws one index from unnormalised non-negative `weights` with the uniform `u` (torch.multinomial with one
 * sample). Accumulates in float64; a zero-sum row falls back to a uniform choice.
 */
export function drawIndex(weights: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let j = 0; j < weights.length; j++) total += weights[j]!;
  if (!(total > 0)) return Math.min(weights.length - 1, Math.floor(u * weights.length));
  const target = u * total;
  let acc = 0;
  let last = -1;
  for (let j = 0; j < weights.length; j++) {
    if (weights[j]! <= 0) continue;
    acc += weights[j]!;
    last = j;
    if (target < acc) return j;
  }
  return last;
}

/** Which draws: keyed by (seed, step, global row), so they do not depend on how the batch is split over ranks. */
export interface NegativeKey {
  seed: number;
  step: number;
  /** Global row of the first local row. */
  rankOffset: number;
}

/**
 * The hard-negative sampler (torch.multinomial(weights[i], 1) per row): for local row i, a negative image drawn
 * from t2i[i] and a negative text from i2t[i] ([rows, columns] each, row-major). Indices are gathered columns.
 */
export function sampleHardNegatives(
  weights: { t2i: Float32Array; i2t: Float32Array }, rows: number, columns: number, key: NegativeKey,
): { negImageIdx: Int32Array; negTextIdx: Int32Array } {
  const row = (w: Float32Array, i: number) => w.subarray(i * columns, (i + 1) * columns);
  const negImageIdx = new Int32Array(rows);
  const negTextIdx = new Int32Array(rows);
  for (let i = 0; i < rows; i++) {
    const g = key.rankOffset + i;
    negImageIdx[i] = drawIndex(row(weights.t2i, i), uniformAt('itm', key.seed, key.step, g, 'image'));
    negTextIdx[i] = drawIndex(row(weights.i2t, i), uniformAt('itm', key.seed, key.step, g, 'text'));
  }
  return { negImageIdx, negTextIdx };
}

/** ITM negatives for the local batch. Give either `negVisionHidden`, or `negImageIndex` (+ `extraVisionHidden`). */
export interface ItmNegatives {
  /** [B,P,Dv] the pre-ln_vision hidden state of the negative image of each local text (may come from another rank). */
  negVisionHidden?: tf.Tensor3D;
  /**
   * For each local text, the row of its negative image in `[visionHidden ; extraVisionHidden]`. Local negatives
   * given this way reuse the cross-attention keys/values already projected for the query pass.
   */
  negImageIndex?: number[];
  /** [K,P,Dv] images referred to by `negImageIndex` values ≥ B. */
  extraVisionHidden?: tf.Tensor3D;
  /** [B,T] int32 token ids of the negative text of each local image ([CLS] kept). */
  negTextIds: tf.Tensor2D;
  /** [B,T] int32 attention mask of the negative texts. */
  negTextMask: tf.Tensor2D;
}

/** Negatives taken from the local batch by index (the golden case, or world size 1). */
export function localNegatives(inputs: { inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D }, negImageIdx: ArrayLike<number>, negTextIdx: ArrayLike<number>): ItmNegatives {
  const b = inputs.inputIds.shape[0];
  for (const i of [...Array.from(negImageIdx), ...Array.from(negTextIdx)]) {
    if (!Number.isInteger(i) || i < 0 || i >= b) throw new ModelInputError(`negative index ${i} is not a row of the local batch of ${b}`);
  }
  return tf.tidy(() => {
    const idx = tf.tensor1d(Array.from(negTextIdx), 'int32');
    return {
      negImageIndex: Array.from(negImageIdx),
      negTextIds: tf.keep(tf.gather(inputs.inputIds, idx) as tf.Tensor2D),
      negTextMask: tf.keep(tf.gather(inputs.attentionMask, idx) as tf.Tensor2D),
    };
  });
}

/**
 * The ITM pass over 3B pairs: texts [pos ; pos ; neg], images [pos ; neg ; pos], queries and text attending to each
 * other. `cross` are the projected keys/values of the image pool (`[local ; extra]`), selected per pair; without it
 * (the recompute baseline) each pair's image is projected again. Only the query rows of the last layer are read.
 */
export function itmPass(
  p: Params, config: Blip2Config,
  images: { cross?: Map<number, HeadKeyValue>; imageEmbeds: tf.Tensor3D },
  text: { inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D },
  negatives: { negImageIndex: number[]; negTextIds: tf.Tensor2D; negTextMask: tf.Tensor2D },
): Pass {
  const B = text.inputIds.shape[0];
  const Q = config.num_query_tokens;
  const positives = Array.from({ length: B }, (_, b) => b);
  const imageRows = tf.tensor1d([...positives, ...negatives.negImageIndex, ...positives], 'int32'); // [3B]
  const ids3 = tf.concat([text.inputIds, text.inputIds, negatives.negTextIds], 0) as tf.Tensor2D; // [3B,T]
  const mask3 = tf.concat([text.attentionMask, text.attentionMask, negatives.negTextMask], 0) as tf.Tensor2D; // [3B,T]
  return {
    h: embeddings(p, config, queryTokens(p, 3 * B), ids3), // [3B,Q+T,H]
    queryLength: Q,
    selfMask: maskTensor(itmMask(mask3.arraySync(), Q)), // [3B,1,Q+T,Q+T]
    cross: images.cross ? selectImages(images.cross, imageRows) : projectImage(p, config, tf.gather(images.imageEmbeds, imageRows) as tf.Tensor3D),
    lastLayerRows: Q,
  };
}

/** itm_logits = mean over queries of itm_head(query outputs) [3B,2]; CE against [1]*B + [0]*2B, summed, / `rows`. */
export function itmLoss(p: Params, queryOutput: tf.Tensor3D, rows: number): { loss: tf.Scalar; logits: tf.Tensor2D } {
  const B = queryOutput.shape[0] / 3;
  const logits = tf.mean(linear(p, 'itm_head', queryOutput), 1) as tf.Tensor2D; // [3B,2]
  const labels = tf.tensor1d(Array.from({ length: 3 * B }, (_, i) => (i < B ? 1 : 0)), 'int32'); // [3B]
  return { loss: tf.div(crossEntropySum(logits, labels, 0), rows) as tf.Scalar, logits };
}

/**
 * ITM scores for retrieval (LAVIS blip2_qformer.py `compute_itm`, used by `compute_sim_matrix`): for each pair, the
 * queries and the text attend to each other (bidirectional mask), the queries cross-attend the pair's image, and the
 * score is the positive-class logit `itm_head(query outputs)[:, :, 1]` averaged over the queries (no softmax).
 * `cross` are the projected keys/values of an image pool, `imageRows` [n] the pool row of each pair's image, the
 * texts [n,T] with their 0/1 mask rows. Returns [n].
 */
export function itmScores(
  p: Params, config: Blip2Config, cross: Map<number, HeadKeyValue>, imageRows: readonly number[],
  text: { inputIds: tf.Tensor2D; attentionMask: number[][] },
): tf.Tensor1D {
  return tf.tidy(() => {
    const n = imageRows.length;
    const Q = config.num_query_tokens;
    const h = embeddings(p, config, queryTokens(p, n), text.inputIds); // [n,Q+T,H]
    const out = qformerEncoder(p, config, h, {
      queryLength: Q, selfMask: maskTensor(itmMask(text.attentionMask, Q)), cross: selectImages(cross, tf.tensor1d(Array.from(imageRows), 'int32')), lastLayerRows: Q,
    }).out; // [n,Q,H]
    const logits = linear(p, 'itm_head', out); // [n,Q,2]
    return tf.reshape(tf.mean(tf.slice(logits, [0, 0, 1], [n, Q, 1]), 1), [n]) as tf.Tensor1D; // [n]
  });
}
