/**
 * ITC, image-text contrastive learning (BLIP-2 §3.2; LAVIS Blip2Qformer.forward, "Image-text Contrastive"):
 * the queries attend to the image but not to the text (query pass), the text attends to itself only (text pass);
 * each query's output is compared with the text's [CLS] output, the best query counts, and a label-smoothed
 * cross-entropy pulls each pair above every other pair of the global batch (negatives gathered from every rank).
 */
import type { Blip2Config } from './config';
import { tf } from '../engine';
import { crossEntropySum, l2normalize, linear } from './layers';
import { itcQueryMask, itcTextMask, type AttentionMask } from './masks';
import { additiveMask, embeddings, queryTokens, type HeadKeyValue, type PassOptions } from './qformer';
import type { Params } from './params';

/** A pass's input and options: what `qformerEncoder` or one stream of `qformerLockstep` takes. */
export type Pass = PassOptions & { h: tf.Tensor3D };

/** 0/1 mask [B,Sq,Sk] -> additive [B,1,Sq,Sk]; undefined when nothing is masked (adding zeros changes nothing). */
export function maskTensor(mask: AttentionMask): tf.Tensor4D | undefined {
  if (mask.data.every((v) => v === 1)) return undefined;
  return tf.tidy(() => additiveMask(tf.tensor3d(mask.data, mask.shape, 'int32')));
}

/** The query pass: the query tokens alone, cross-attending to the image (mask all ones). */
export function itcQueryPass(p: Params, config: Blip2Config, cross: Map<number, HeadKeyValue>, batch: number, keepKeyValues = false): Pass {
  const Q = config.num_query_tokens;
  return { h: embeddings(p, config, queryTokens(p, batch)), queryLength: Q, selfMask: maskTensor(itcQueryMask(batch, Q)), cross, keepKeyValues }; // [B,Q,H]
}

/** The text pass: the caption alone, bidirectional, pads masked. Only [CLS] of the last layer is read (unless `allRows`). */
export function itcTextPass(p: Params, config: Blip2Config, inputIds: tf.Tensor2D, attentionRows: number[][], allRows = false): Pass {
  return { h: embeddings(p, config, undefined, inputIds), queryLength: 0, selfMask: maskTensor(itcTextMask(attentionRows)), lastLayerRows: allRows ? undefined : 1 }; // [B,T,H]
}

/** image_feats = l2norm(vision_projection(query_output)): [B,Q,H] -> [B,Q,E]. */
export function imageFeatures(p: Params, queryOutput: tf.Tensor3D): tf.Tensor3D {
  return l2normalize(linear(p, 'vision_projection', queryOutput)) as tf.Tensor3D;
}

/** text_feat = l2norm(text_projection([CLS] output)): [B,T|1,H] -> [B,E]. */
export function textFeature(p: Params, textOutput: tf.Tensor3D): tf.Tensor2D {
  const [b, , H] = textOutput.shape;
  const cls = tf.reshape(tf.slice(textOutput, [0, 0, 0], [b, 1, H]), [b, H]); // [B,H]
  return l2normalize(linear(p, 'text_projection', cls)) as tf.Tensor2D; // [B,E]
}

/**
 * sim_i2t[i,j] = max_q <image_feats[i,q], text_all[j]> / temp; sim_t2i[i,j] = max_q <text_feat[i], image_all[j,q]> / temp.
 * imageFeats [B,Q,E], textFeat [B,E], allImageFeats [N,Q,E], allTextFeat [N,E] -> [B,N] each.
 */
export function itcSimilarities(temp: tf.Tensor | number, imageFeats: tf.Tensor3D, textFeat: tf.Tensor2D, allImageFeats: tf.Tensor3D, allTextFeat: tf.Tensor2D) {
  const [b, Q, E] = imageFeats.shape;
  const n = allTextFeat.shape[0];
  const i2t = tf.reshape(tf.matMul(tf.reshape(imageFeats, [b * Q, E]), allTextFeat, false, true), [b, Q, n]); // [B,Q,N]
  const simI2t = tf.div(tf.max(i2t, 1), temp) as tf.Tensor2D; // [B,N]
  const t2i = tf.reshape(tf.matMul(textFeat, tf.reshape(allImageFeats, [n * Q, E]), false, true), [b, n, Q]); // [B,N,Q]
  const simT2i = tf.div(tf.max(t2i, 2), temp) as tf.Tensor2D; // [B,N]
  return { simI2t, simT2i };
}

/**
 * (CE(sim_i2t, targets) + CE(sim_t2i, targets)) / 2 over the global batch: local row i's positive is gathered
 * column offset + i. The sum over local rows is divided by 2·`rows` (the global batch), so the all-reduce SUM of
 * every rank's term is the loss of the whole batch.
 */
export function itcLoss(config: Blip2Config, simI2t: tf.Tensor2D, simT2i: tf.Tensor2D, offset: number, rows: number): tf.Scalar {
  const b = simI2t.shape[0];
  const smoothing = config.lavis_config.itc_label_smoothing;
  const targets = tf.range(offset, offset + b, 1, 'int32') as tf.Tensor1D;
  const sum = tf.add(crossEntropySum(simI2t, targets, smoothing), crossEntropySum(simT2i, targets, smoothing));
  return tf.div(sum, 2 * rows) as tf.Scalar;
}
