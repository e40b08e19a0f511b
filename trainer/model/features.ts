/**
 * What a rank computes around the stage-1 step, outside it: the ITC features it all-gathers first, ln_vision alone
 * (golden checks), and the backward through its features for gathering that passes gradients back.
 */
import { hasCrossAttention, trainableNames, type Blip2Config } from './config';
import { tf } from '../engine';
import { gradients } from '../engine';
import { imageFeatures, itcQueryPass, itcTextPass, textFeature } from './itc';
import { layerNorm, param } from './layers';
import { projectImage, qformerEncoder } from './qformer';
import type { Params } from './params';
import type { Stage1Inputs } from './stage1';

type LocalInputs = Pick<Stage1Inputs, 'visionHidden' | 'inputIds' | 'attentionMask'>;

/** ln_vision (= `vision_model.post_layernorm`): visionHidden [B,P,Dv] -> image_embeds [B,P,Dv]. */
export function lnVision(params: Params, config: Blip2Config, visionHidden: tf.Tensor3D): tf.Tensor3D {
  return tf.tidy(() => layerNorm(params, 'vision_model.post_layernorm', visionHidden, config.lavis_config.ln_vision_eps) as tf.Tensor3D);
}

/** imageFeats [B,Q,E] and textFeat [B,E] of a batch (query pass and text pass), inside the caller's scope. */
function itcFeatures(params: Params, config: Blip2Config, inputs: LocalInputs) {
  const b = inputs.visionHidden.shape[0];
  const embeds = layerNorm(params, 'vision_model.post_layernorm', inputs.visionHidden, config.lavis_config.ln_vision_eps) as tf.Tensor3D; // [B,P,Dv]
  const queryPass = itcQueryPass(params, config, projectImage(params, config, embeds), b);
  const textPass = itcTextPass(params, config, inputs.inputIds, inputs.attentionMask.arraySync());
  return {
    imageFeats: imageFeatures(params, qformerEncoder(params, config, queryPass.h, queryPass).out), // [B,Q,E]
    textFeat: textFeature(params, qformerEncoder(params, config, textPass.h, textPass).out), // [B,E]
  };
}

/** ITC features of the local batch without gradients (what a rank all-gathers before its step). */
export function stage1Features(params: Params, config: Blip2Config, inputs: LocalInputs): { imageFeats: tf.Tensor3D; textFeat: tf.Tensor2D } {
  return tf.tidy(() => itcFeatures(params, config, inputs));
}

/**
 * Backward of the ITC features alone: gradients w.r.t. the trainable parameters of
 * Σ imageFeats·dImageFeats + Σ textFeat·dTextFeat, i.e. the upstream gradients `dImageFeats` [B,Q,E] and
 * `dTextFeat` [B,E] pushed through this rank's feature computation. With the gathered-feature gradients of all ranks
 * summed and sliced to this rank, adding these to `stage1Step`'s grads gives the gradient of gathering that passes
 * gradients back (golden `grad_full`), instead of LAVIS's detached gathering.
 */
export function stage1FeatureBackward(
  params: Params, config: Blip2Config, inputs: LocalInputs, upstream: { imageFeats: tf.Tensor3D; textFeat: tf.Tensor2D },
  trainable: string[] = trainableNames(config, 1),
): Map<string, tf.Tensor> {
  const xs = trainable.map((n) => param(params, n));
  const r = gradients(() => {
    const f = itcFeatures(params, config, inputs);
    return tf.add(tf.sum(tf.mul(f.imageFeats, upstream.imageFeats)), tf.sum(tf.mul(f.textFeat, upstream.textFeat))) as tf.Scalar;
  }, xs);
  r.value.dispose();
  const out = new Map<string, tf.Tensor>();
  trainable.forEach((n, i) => out.set(n, r.grads[i] ?? tf.zerosLike(xs[i]!)));
  return out;
}

/** Layers of the Q-Former that cross-attend (for reports and tests). */
export function crossAttentionLayers(config: Blip2Config): number[] {
  return Array.from({ length: config.qformer_config.num_hidden_layers }, (_, i) => i).filter((i) => hasCrossAttention(config.qformer_config, i));
}

/**
 * Retrieval features (LAVIS blip2_qformer.py `compute_sim_matrix`): image_feats [B,Q,E] of the query pass over
 * image_embeds = ln_vision(ViT output) [B,P,Dv], without gradients.
 */
export function imageItcFeatures(params: Params, config: Blip2Config, imageEmbeds: tf.Tensor3D): tf.Tensor3D {
  return tf.tidy(() => {
    const pass = itcQueryPass(params, config, projectImage(params, config, imageEmbeds), imageEmbeds.shape[0]);
    return imageFeatures(params, qformerEncoder(params, config, pass.h, pass).out); // [B,Q,E]
  });
}

/** Retrieval features: text_feat [B,E] of the text pass ([CLS] output, projected, normalised), without gradients. */
export function textItcFeatures(params: Params, config: Blip2Config, inputIds: tf.Tensor2D, attentionRows: number[][]): tf.Tensor2D {
  return tf.tidy(() => {
    const pass = itcTextPass(params, config, inputIds, attentionRows);
    return textFeature(params, qformerEncoder(params, config, pass.h, pass).out); // [B,E]
  });
}
