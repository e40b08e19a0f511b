/**
 * The frozen OPT decoder of stage 2 (HF OPTForCausalLM, do_layer_norm_before = True: every OPT size but 350m;
 * LAVIS blip2_opt.py), with Hugging Face's names `language_model.model.decoder.*`: token embeddings, learned
 * positions offset by 2, pre-LN layers (causal, key-padding-masked self-attention; ReLU FFN), a final LayerNorm,
 * and the LM head tied to `embed_tokens` (no bias).
 *
 * `optLayer` is one OPTDecoderLayer and `optDecoder` the whole decoder on float32 tensors (the reference).
 * `OptLanguageModel` runs the same functions on weights held 16-bit outside the engine (frozen-weights.ts): each
 * layer is widened only while it runs, in the forward and again in the backward, which recomputes the layer's
 * activations from its input; the gradient flows through every layer into the soft prompt.
 */
import { OPT_LAYER_NORM_EPS, OPT_POSITION_OFFSET, type Blip2Config } from './config';
import { tf } from '../engine';
import { ModelInputError } from './errors';
import { FrozenWeights, frozenCall } from './frozen-weights';
import type { LanguageModel, LanguageModelTargets, LanguageModelText } from './language-model';
import { attention, layerNorm, linear, param } from './layers';
import type { AttentionMask } from './masks';
import type { Params } from './params';
import { additiveMask } from './qformer';

const DECODER = 'language_model.model.decoder';
const EMBED_TOKENS = `${DECODER}.embed_tokens.weight`;
const EMBED_POSITIONS = `${DECODER}.embed_positions.weight`;
const FINAL_LAYER_NORM = `${DECODER}.final_layer_norm`;

/** Labels ignored by the loss (torch CrossEntropyLoss ignore_index). */
export const IGNORE_INDEX = -100;

/**
 * OPTLearnedPositionalEmbedding's rows: position = cumsum(mask)·mask − 1, offset by 2 (OPT's table starts with two
 * rows that real tokens never use; pads map to row 1). mask [B][S] -> [B][S].
 */
export function optPositionIds(mask: number[][]): number[][] {
  return mask.map((row) => {
    let seen = 0;
    return row.map((m) => {
      seen += m;
      return seen * m - 1 + OPT_POSITION_OFFSET;
    });
  });
}

/** Causal self-attention mask with padded keys blocked, [B,S,S] (1 = may attend): key j ≤ query i and mask[j] = 1. */
export function optCausalMask(mask: number[][]): AttentionMask {
  const b = mask.length;
  const s = mask[0]?.length ?? 0;
  const data = new Uint8Array(b * s * s);
  for (let r = 0; r < b; r++) for (let i = 0; i < s; i++) for (let j = 0; j <= i; j++) data[(r * s + i) * s + j] = mask[r]![j] === 1 ? 1 : 0;
  return { data, shape: [b, s, s] };
}

/** The attention mask over [soft prompt ; text]: every prompt row is real. [B][T] -> [B][P+T]. */
export function prefixedMask(prefixLength: number, mask: number[][]): number[][] {
  return mask.map((row) => [...Array<number>(prefixLength).fill(1), ...row]);
}

/**
 * LAVIS Blip2OPT.forward's targets: −100 on the soft prompt, on pads and on the first `promptLength` text tokens
 * (BOS included); OPTForCausalLM then shifts them (logits[:, :-1] against labels[:, 1:]), so with no prompt the BOS
 * is a target, predicted from the last prompt row.
 */
export function optTargets(config: Blip2Config, prefixLength: number, ids: number[][], promptLength: number): LanguageModelTargets {
  const T = ids[0]?.length ?? 0;
  if (!Number.isInteger(promptLength) || promptLength < 0 || promptLength > T) throw new ModelInputError(`prompt length ${promptLength} must be an integer in 0…${T} (the text length)`);
  const pad = config.text_config.pad_token_id;
  const S = prefixLength + T;
  const labels = ids.map((row) => [...Array<number>(prefixLength).fill(IGNORE_INDEX), ...row.map((v, t) => (v === pad || t < promptLength ? IGNORE_INDEX : v))]);
  const rowIndex: number[] = [];
  const targets: number[] = [];
  labels.forEach((row, b) => {
    for (let s = 0; s + 1 < S; s++) {
      if (row[s + 1] === IGNORE_INDEX) continue;
      rowIndex.push(b * S + s);
      targets.push(row[s + 1]!);
    }
  });
  return { labels, rowIndex, targets };
}

/**
 * OPTDecoderLayer.forward, pre-LN: x [B,S,D], additive self-attention mask [B,1,S,S] -> [B,S,D].
 *   x += out_proj(attn(self_attn_layer_norm(x)))   (q scaled by head_dim^-0.5: the scores are q·kᵀ/√d)
 *   x += fc2(relu(fc1(final_layer_norm(x))))
 */
export function optLayer(params: Params, config: Blip2Config, layer: number, x: tf.Tensor3D, selfMask: tf.Tensor): tf.Tensor3D {
  const o = config.text_config;
  const p = `${DECODER}.layers.${layer}`;
  const h = layerNorm(params, `${p}.self_attn_layer_norm`, x, OPT_LAYER_NORM_EPS); // [B,S,D]
  const q = linear(params, `${p}.self_attn.q_proj`, h); // [B,S,D]
  const k = linear(params, `${p}.self_attn.k_proj`, h); // [B,S,D]
  const v = linear(params, `${p}.self_attn.v_proj`, h); // [B,S,D]
  // HF blocks keys with finfo.min, we with −10000 (as the Q-Former): both give exact zeros after softmax in float32.
  const context = attention(q, k, v, o.num_attention_heads, selfMask); // [B,S,D]
  const x1 = tf.add(x, linear(params, `${p}.self_attn.out_proj`, context)); // [B,S,D]
  const h2 = layerNorm(params, `${p}.final_layer_norm`, x1, OPT_LAYER_NORM_EPS); // [B,S,D]
  const ffn = linear(params, `${p}.fc2`, tf.relu(linear(params, `${p}.fc1`, h2))); // [B,S,F] -> [B,S,D]
  return tf.add(x1, ffn) as tf.Tensor3D;
}

/** inputs_embeds [B,S,D] of the output sequence plus its positions: [prefix ; tokens] + embed_positions[positions]. */
function decoderInput(prefix: tf.Tensor3D, tokens: tf.Tensor3D, positions: tf.Tensor3D): tf.Tensor3D {
  return tf.add(tf.concat([prefix, tokens], 1), positions) as tf.Tensor3D; // [B,P+T,D]
}

/** Additive mask [B,1,S,S] of the output sequence (full mask [B][S]). */
function selfMaskOf(full: number[][]): tf.Tensor4D {
  const m = optCausalMask(full);
  return tf.tidy(() => additiveMask(tf.tensor3d(m.data, m.shape, 'int32')));
}

/**
 * OPTDecoder.forward on float32 tensors (`params` holds `language_model.*`): soft prompt [B,P,D] and text ->
 * last hidden state [B,P+T,D] after the final LayerNorm. The reference that `OptLanguageModel` must match.
 */
export function optDecoder(params: Params, config: Blip2Config, prefix: tf.Tensor3D, text: LanguageModelText): tf.Tensor3D {
  const o = config.text_config;
  const [B, P, D] = prefix.shape;
  const T = text.ids[0]?.length ?? 0;
  const full = prefixedMask(P, text.mask); // [B][S]
  const tokens = tf.reshape(tf.gather(param(params, EMBED_TOKENS), tf.tensor1d(text.ids.flat(), 'int32')), [B, T, D]) as tf.Tensor3D; // [B,T,D]
  const positions = tf.reshape(tf.gather(param(params, EMBED_POSITIONS), tf.tensor1d(optPositionIds(full).flat(), 'int32')), [B, P + T, D]) as tf.Tensor3D; // [B,S,D]
  let x = decoderInput(prefix, tokens, positions); // [B,S,D]
  const mask = selfMaskOf(full); // [B,1,S,S]
  for (let i = 0; i < o.num_hidden_layers; i++) x = optLayer(params, config, i, x, mask);
  return layerNorm(params, FINAL_LAYER_NORM, x, OPT_LAYER_NORM_EPS) as tf.Tensor3D;
}

/** The tied LM head: rows [N,D] · embed_tokensᵀ -> logits [N,V] (OPTForCausalLM.lm_head, no bias). */
export function optLmHead(params: Params, rows: tf.Tensor2D): tf.Tensor2D {
  return tf.matMul(rows, param(params, EMBED_TOKENS), false, true); // [N,V]
}

/** The frozen OPT held outside the engine (16-bit for an F16 checkpoint), widened one layer at a time. */
export class OptLanguageModel implements LanguageModel {
  private constructor(
    readonly config: Blip2Config,
    readonly weights: FrozenWeights,
  ) {}

  /**
   * `language_model.*` from safetensors file(s) (F16 and BF16 stay 16-bit; F32 too is narrowed to F16 with `fp16`);
   * names and shapes checked both ways, from the headers first.
   */
  static load(files: string | string[], config: Blip2Config, options: { fp16?: boolean } = {}): OptLanguageModel {
    return new OptLanguageModel(config, FrozenWeights.load(files, config, 'language_model', options));
  }

  /** From float32 tensors (e.g. `createParams(config, seed, {groups: ['language_model']})`), narrowed to F16 when asked. */
  static async fromParams(params: Params, config: Blip2Config, options: { fp16?: boolean } = {}): Promise<OptLanguageModel> {
    return new OptLanguageModel(config, await FrozenWeights.fromParams(params, config, 'language_model', options));
  }

  /** Random F16 weights made in JS memory (benchmarks of LMs too large to create as tensors). */
  static random(config: Blip2Config, seed: number): OptLanguageModel {
    return new OptLanguageModel(config, FrozenWeights.random(config, 'language_model', seed));
  }

  get hiddenSize(): number {
    return this.config.text_config.hidden_size;
  }

  get vocabSize(): number {
    return this.config.text_config.vocab_size;
  }

  targets(prefixLength: number, text: LanguageModelText, promptLength: number): LanguageModelTargets {
    return optTargets(this.config, prefixLength, text.ids, promptLength);
  }

  /**
   * OPTDecoder.forward over [prefix ; text] as `optDecoder`, with the weights widened per piece. Token and position
   * embeddings are looked up in the resident tables (frozen: constants); each layer, then the final LayerNorm,
   * runs through `frozenCall`, so the backward pass recomputes one layer at a time.
   */
  hidden(prefix: tf.Tensor3D, text: LanguageModelText): tf.Tensor3D {
    const o = this.config.text_config;
    const [B, P, D] = prefix.shape;
    checkText(this.config, prefix, text);
    const T = text.ids[0]?.length ?? 0;
    const full = prefixedMask(P, text.mask); // [B][S]
    const tokens = tf.tensor3d(this.weights.rows(EMBED_TOKENS, text.ids.flat()), [B, T, D]); // [B,T,D]
    const positions = tf.tensor3d(this.weights.rows(EMBED_POSITIONS, optPositionIds(full).flat()), [B, P + T, D]); // [B,S,D]
    let x = decoderInput(prefix, tokens, positions); // [B,S,D]
    const mask = selfMaskOf(full); // [B,1,S,S]
    for (let i = 0; i < o.num_hidden_layers; i++) {
      x = frozenCall(this.weights, [`${DECODER}.layers.${i}.`], (w, h, [m]) => optLayer(w, this.config, i, h as tf.Tensor3D, m!), x, [mask]) as tf.Tensor3D;
    }
    return frozenCall(this.weights, [`${FINAL_LAYER_NORM}.`], (w, h) => layerNorm(w, FINAL_LAYER_NORM, h, OPT_LAYER_NORM_EPS), x) as tf.Tensor3D; // [B,S,D]
  }

  /** The tied head with `embed_tokens` widened for the product only (forward and backward). rows [N,D] -> [N,V]. */
  logits(rows: tf.Tensor2D): tf.Tensor2D {
    return frozenCall(this.weights, [EMBED_TOKENS], (w, h) => optLmHead(w, h as tf.Tensor2D), rows) as tf.Tensor2D;
  }
}

function checkText(config: Blip2Config, prefix: tf.Tensor3D, text: LanguageModelText): void {
  const o = config.text_config;
  const [B, P, D] = prefix.shape;
  if (D !== o.hidden_size) throw new ModelInputError(`soft prompt width ${D} != language model hidden_size ${o.hidden_size}`);
  const T = text.ids[0]?.length ?? 0;
  if (text.ids.length !== B || text.mask.length !== B) throw new ModelInputError(`text batch ${text.ids.length} (mask ${text.mask.length}) != soft prompt batch ${B}`);
  if (text.ids.some((r) => r.length !== T) || text.mask.some((r) => r.length !== T)) throw new ModelInputError(`text ids and mask must all have length ${T}`);
  if (P + T > o.max_position_embeddings) throw new ModelInputError(`soft prompt ${P} + text ${T} tokens exceed max_position_embeddings ${o.max_position_embeddings}: shorten the text`);
}
