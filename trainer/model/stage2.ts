/**
 * The stage-2 pre-training step (BLIP-2 §3.3, vision-to-language generative learning; LAVIS blip2_opt.py
 * Blip2OPT.forward): the Q-Former's query outputs, projected to the LM's width, are a soft prompt in front of the
 * caption, and the frozen LM's next-token loss trains the Q-Former's query path, `query_tokens`, ln_vision and
 * `language_projection`. The ViT and the LM stay frozen; the gradient flows back through every LM layer.
 */
import { trainableNames, type Blip2Config } from './config';
import { tf } from '../engine';
import { gradients } from '../engine';
import { ModelInputError } from './errors';
import type { LanguageModel, LanguageModelText } from './language-model';
import { crossEntropySum, layerNorm, linear, param } from './layers';
import { embeddings, projectImage, qformerEncoder, queryTokens } from './qformer';
import type { Params } from './params';

export interface Stage2Inputs {
  /** [B,P,Dv] frozen ViT output before ln_vision (ln_vision runs inside, so its gradient flows). */
  visionHidden: tf.Tensor3D;
  /** [B,T] int32 LM token ids (BOS first, caption, "\n", right padded with the LM's pad id). */
  optInputIds: tf.Tensor2D;
  /** [B,T] int32, 1 = real token. */
  optAttentionMask: tf.Tensor2D;
  /**
   * Global denominator of the loss: target tokens of the whole batch over every rank (all-reduce SUM of each
   * rank's `stage2TargetCount`). Default: this batch's count.
   */
  normalisers?: { tokens?: number };
}

export interface Stage2Options {
  /** Leading text tokens (BOS included) that are a prompt, not targets; default 0 (the empty pre-training prompt). */
  promptLength?: number;
  /** Compute gradients (default true); false runs the forward only. */
  grads?: boolean;
  /** Names differentiated; default `trainableNames(config, 2)`. */
  trainable?: string[];
  /** Keep `queryOutput` [B,Q,H], `inputsOpt` [B,Q,D] and `logits` [B,Q+T,V] (every row) in `activations`. */
  activations?: boolean;
}

export interface Stage2Result {
  /** Σ CE over the local targets / the normaliser. */
  loss: number;
  /** Target tokens of the local batch. */
  targetTokens: number;
  /** [B][Q+T] labels in Hugging Face's convention (−100 on the queries, pads and prompt), before the shift. */
  labels: number[][];
  /** Gradient of the loss for each trainable name (empty when `grads: false`). */
  grads: Map<string, tf.Tensor>;
  activations: Map<string, tf.Tensor>;
  /** Release every tensor in this result. */
  dispose(): void;
}

/**
 * Target tokens of a rank's batch (its ids and mask, [B][T]); the all-reduced sum is `normalisers.tokens`, which
 * makes the ranks' summed gradients the one-process gradient of the whole batch.
 */
export function stage2TargetCount(lm: LanguageModel, text: LanguageModelText, promptLength = 0): number {
  return lm.targets(lm.config.num_query_tokens, text, promptLength).targets.length;
}

/** One stage-2 step: the LM loss and its gradients w.r.t. the stage-2 trainable parameters. */
export function stage2Step(params: Params, lm: LanguageModel, inputs: Stage2Inputs, options: Stage2Options = {}): Stage2Result {
  const config = lm.config;
  // 1. Inputs, targets and the normaliser come from the token ids alone.
  const text = checkInputs(config, inputs);
  const Q = config.num_query_tokens;
  const t = lm.targets(Q, text, options.promptLength ?? 0);
  const tokens = inputs.normalisers?.tokens ?? t.targets.length;
  const activations = new Map<string, tf.Tensor>();
  const keep = (name: string, x: tf.Tensor) => activations.set(name, tf.keep(x));

  // 2. Blip2OPT.forward.
  const forward = (): tf.Scalar => {
    const B = inputs.visionHidden.shape[0];
    // a. image_embeds = ln_vision(ViT output); the query-only Q-Former pass (no text: Blip2OPT drops the text parts).
    const imageEmbeds = layerNorm(params, 'vision_model.post_layernorm', inputs.visionHidden, config.lavis_config.ln_vision_eps) as tf.Tensor3D; // [B,P,Dv]
    const h = embeddings(params, config, queryTokens(params, B)); // [B,Q,H]
    const queryOutput = qformerEncoder(params, config, h, { queryLength: Q, cross: projectImage(params, config, imageEmbeds) }).out; // [B,Q,H]
    // b. inputs_opt = language_projection(query_output): the soft prompt.
    const inputsOpt = linear(params, 'language_projection', queryOutput) as tf.Tensor3D; // [B,Q,D]
    // c. The LM over [inputs_opt ; embed_tokens(ids)] with mask [1]*Q ++ opt_attention_mask.
    const hidden = lm.hidden(inputsOpt, text); // [B,S,D]
    const [, S, D] = hidden.shape;
    const flat = tf.reshape(hidden, [B * S, D]) as tf.Tensor2D; // [B·S,D]
    if (options.activations) {
      keep('queryOutput', queryOutput);
      keep('inputsOpt', inputsOpt);
      keep('logits', tf.reshape(lm.logits(flat), [B, S, lm.vocabSize]));
    }
    // d. CE(logits[:, :-1], labels[:, 1:]), no smoothing, over the rows that have a target only.
    if (!t.targets.length) return tf.mul(tf.sum(flat), 0) as tf.Scalar;
    const rows = tf.gather(flat, tf.tensor1d(t.rowIndex, 'int32')) as tf.Tensor2D; // [M,D]
    const sum = crossEntropySum(lm.logits(rows), tf.tensor1d(t.targets, 'int32'), 0); // [M,V] -> []
    return tf.div(sum, Math.max(tokens, 1)) as tf.Scalar;
  };

  // 3. Backward: `gradients` frees as it goes, and drives the LM layers' recomputation (frozen-weights.ts).
  const grads = new Map<string, tf.Tensor>();
  let total: tf.Tensor;
  if (options.grads ?? true) {
    const names = options.trainable ?? trainableNames(config, 2);
    const xs = names.map((n) => param(params, n));
    const r = gradients(forward, xs);
    names.forEach((n, i) => grads.set(n, r.grads[i] ?? tf.zerosLike(xs[i]!)));
    total = r.value;
  } else total = tf.tidy(forward);
  const loss = total.dataSync()[0]!;
  total.dispose();
  return {
    loss,
    targetTokens: t.targets.length,
    labels: t.labels,
    grads,
    activations,
    dispose() {
      for (const x of grads.values()) x.dispose();
      for (const x of activations.values()) x.dispose();
    },
  };
}

function checkInputs(config: Blip2Config, inputs: Stage2Inputs): LanguageModelText {
  const [b, , Dv] = inputs.visionHidden.shape;
  if (Dv !== config.vision_config.hidden_size) throw new ModelInputError(`visionHidden width ${Dv} != vision hidden_size ${config.vision_config.hidden_size}`);
  const shape = JSON.stringify(inputs.optInputIds.shape);
  if (inputs.optInputIds.shape[0] !== b) throw new ModelInputError(`optInputIds batch ${inputs.optInputIds.shape[0]} != visionHidden batch ${b}`);
  if (JSON.stringify(inputs.optAttentionMask.shape) !== shape) throw new ModelInputError(`optAttentionMask shape ${JSON.stringify(inputs.optAttentionMask.shape)} != optInputIds shape ${shape}`);
  const tokens = inputs.normalisers?.tokens;
  if (tokens !== undefined && (!Number.isInteger(tokens) || tokens < 0)) throw new ModelInputError(`normalisers.tokens must be a non-negative integer, got ${tokens}`);
  return { ids: inputs.optInputIds.arraySync(), mask: inputs.optAttentionMask.arraySync() };
}
