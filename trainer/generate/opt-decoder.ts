/**
 * The OPT decoder of stage 2 with a key/value cache, for generation (search.ts's `StepDecoder`): one pass over the
 * prefix [soft prompt ; prompt tokens] fills every layer's keys and values, then each appended token costs one
 * position (its query against the cached keys). Same arithmetic as `optDecoder` (trainer/model/opt.ts) on float32
 * parameters (`language_model.*`): pre-LN layers, q·kᵀ/√d, ReLU FFN, final LayerNorm, tied LM head, positions
 * from the running count of real tokens (+2), padded prompt tokens masked as keys (left padding for batched prompts).
 * The weights come either as float32 `Params` or from the frozen `OptLanguageModel` of stage 2 (16-bit resident),
 * widened one layer at a time while it runs, as its training forward does.
 */
import { tf } from '../engine';
import {
  attention, layerNorm, linear, optCausalMask, optLmHead, optPositionIds, prefixedMask, additiveMask,
  OptLanguageModel, OPT_LAYER_NORM_EPS, type Blip2Config, type Params,
} from '../model';
import type { StepDecoder } from './search';

const DECODER = 'language_model.model.decoder';

/** A prompt after the soft prompt: token ids per row and their mask (0 = padding), all rows the same length. */
export interface PromptTokens {
  ids: number[][];
  mask: number[][];
}

/** Prompts of different lengths as one batch, padded on the left (as LAVIS pads batched prompts) with `pad`. */
export function leftPaddedPrompt(prompts: readonly (readonly number[])[], pad: number): PromptTokens {
  const width = Math.max(0, ...prompts.map((p) => p.length));
  return {
    ids: prompts.map((p) => [...Array<number>(width - p.length).fill(pad), ...p]),
    mask: prompts.map((p) => [...Array<number>(width - p.length).fill(0), ...p.map(() => 1)]),
  };
}

export class CachedOptDecoder implements StepDecoder {
  private keys: tf.Tensor3D[] = [];
  private values: tf.Tensor3D[] = [];
  /** Key mask per row over every cached position. */
  private mask: number[][];
  private last: tf.Tensor2D; // hidden state of each row's last position after the final LayerNorm [rows, D]

  /**
   * Runs the prefix. `softPrompt` [B,P,D] (opt_proj of the Q-Former's query outputs), `prompt` the text prompt's
   * tokens (BOS first, as the OPT tokenizer adds it; empty rows for none).
   */
  constructor(private readonly weights: Params | OptLanguageModel, private readonly config: Blip2Config, softPrompt: tf.Tensor3D, prompt: PromptTokens) {
    const [B, P, D] = softPrompt.shape;
    const T = prompt.ids[0]?.length ?? 0;
    this.mask = prefixedMask(P, prompt.mask);
    const full = this.mask;
    const cm = optCausalMask(full);
    const layers = config.text_config.num_hidden_layers;
    const kept = tf.tidy(() => {
      const tokens = T > 0 ? tf.reshape(this.embed('embed_tokens.weight', prompt.ids.flat()), [B, T, D]) : tf.zeros([B, 0, D]);
      const positions = tf.reshape(this.embed('embed_positions.weight', optPositionIds(full).flat()), [B, P + T, D]);
      let x = tf.add(tf.concat([softPrompt, tokens], 1), positions) as tf.Tensor3D;
      const selfMask = additiveMask(tf.tensor3d(cm.data, cm.shape, 'int32'));
      const ks: tf.Tensor3D[] = [];
      const vs: tf.Tensor3D[] = [];
      for (let i = 0; i < layers; i++) {
        const r = this.layer(i, x, selfMask);
        x = r.x;
        ks.push(r.k);
        vs.push(r.v);
      }
      const last = tf.reshape(tf.slice(x, [0, P + T - 1, 0], [B, 1, D]), [B, D]) as tf.Tensor2D;
      return { ks, vs, last: this.finalNorm(last) };
    });
    this.keys = kept.ks;
    this.values = kept.vs;
    this.last = kept.last;
  }

  get vocabSize(): number {
    return this.config.text_config.vocab_size;
  }

  get rows(): number {
    return this.mask.length;
  }

  /** Cached positions per row (prefix and appended tokens). */
  get length(): number {
    return this.mask[0]?.length ?? 0;
  }

  /** Rows of an embedding table ([N, D] tensor). */
  private embed(name: string, index: number[]): tf.Tensor2D {
    const full = `${DECODER}.${name}`;
    if (this.weights instanceof OptLanguageModel) return tf.tensor2d(this.weights.weights.rows(full, index), [index.length, this.config.text_config.hidden_size]);
    const t = this.weights.get(full);
    if (!t) throw new Error(`parameter "${full}" is missing: create or load the language_model group`);
    return tf.gather(t, tf.tensor1d(index, 'int32')) as tf.Tensor2D;
  }

  /** `f` with the weights under `prefix` as float32 tensors (widened for the call when they are held frozen). */
  private withWeights<T>(prefix: string, f: (p: Params) => T): T {
    if (!(this.weights instanceof OptLanguageModel)) return f(this.weights);
    const p = this.weights.weights.widen([prefix]);
    try {
      return f(p);
    } finally {
      for (const t of p.values()) t.dispose();
    }
  }

  private finalNorm(x: tf.Tensor2D): tf.Tensor2D {
    return this.withWeights(`${DECODER}.final_layer_norm.`, (p) => layerNorm(p, `${DECODER}.final_layer_norm`, x, OPT_LAYER_NORM_EPS) as tf.Tensor2D);
  }

  /** One OPTDecoderLayer (as optLayer) that also returns its keys and values [B,S,D]. */
  private layer(i: number, x: tf.Tensor3D, selfMask: tf.Tensor, past?: { k: tf.Tensor3D; v: tf.Tensor3D }): { x: tf.Tensor3D; k: tf.Tensor3D; v: tf.Tensor3D } {
    const pre = `${DECODER}.layers.${i}`;
    return this.withWeights(`${pre}.`, (params) => this.layerWith(params, pre, x, selfMask, past));
  }

  private layerWith(params: Params, pre: string, x: tf.Tensor3D, selfMask: tf.Tensor, past?: { k: tf.Tensor3D; v: tf.Tensor3D }): { x: tf.Tensor3D; k: tf.Tensor3D; v: tf.Tensor3D } {
    const h = layerNorm(params, `${pre}.self_attn_layer_norm`, x, OPT_LAYER_NORM_EPS);
    const q = linear(params, `${pre}.self_attn.q_proj`, h);
    let k = linear(params, `${pre}.self_attn.k_proj`, h) as tf.Tensor3D;
    let v = linear(params, `${pre}.self_attn.v_proj`, h) as tf.Tensor3D;
    if (past) {
      k = tf.concat([past.k, k], 1);
      v = tf.concat([past.v, v], 1);
    }
    const context = attention(q, k, v, this.config.text_config.num_attention_heads, selfMask);
    const x1 = tf.add(x, linear(params, `${pre}.self_attn.out_proj`, context));
    const h2 = layerNorm(params, `${pre}.final_layer_norm`, x1, OPT_LAYER_NORM_EPS);
    const ffn = linear(params, `${pre}.fc2`, tf.relu(linear(params, `${pre}.fc1`, h2)));
    return { x: tf.add(x1, ffn) as tf.Tensor3D, k, v };
  }

  logits(): Float32Array {
    const w = this.weights;
    return tf.tidy(() => (w instanceof OptLanguageModel ? w.logits(this.last) : optLmHead(w, this.last)).dataSync() as Float32Array);
  }

  append(tokens: readonly number[]): void {
    const B = this.rows;
    if (tokens.length !== B) throw new Error(`append: ${tokens.length} tokens for ${B} rows`);
    const D = this.config.text_config.hidden_size;
    this.mask = this.mask.map((m) => [...m, 1]);
    const positions = this.mask.map((m) => m.reduce((a, b) => a + b, 0) - 1 + 2);
    const keyMask = this.mask;
    const next = tf.tidy(() => {
      const emb = this.embed('embed_tokens.weight', [...tokens]);
      const pos = this.embed('embed_positions.weight', positions);
      let x = tf.reshape(tf.add(emb, pos), [B, 1, D]) as tf.Tensor3D;
      const selfMask = additiveMask(tf.tensor2d(keyMask.flat(), [B, keyMask[0]!.length], 'int32')); // [B,1,1,S]
      const ks: tf.Tensor3D[] = [];
      const vs: tf.Tensor3D[] = [];
      for (let i = 0; i < this.keys.length; i++) {
        const r = this.layer(i, x, selfMask, { k: this.keys[i]!, v: this.values[i]! });
        x = r.x;
        ks.push(r.k);
        vs.push(r.v);
      }
      return { ks, vs, last: this.finalNorm(tf.reshape(x, [B, D]) as tf.Tensor2D) };
    });
    this.replace(next.ks, next.vs, next.last);
  }

  select(rows: readonly number[]): void {
    const idx = [...rows];
    const next = tf.tidy(() => {
      const i = tf.tensor1d(idx, 'int32');
      return { ks: this.keys.map((k) => tf.gather(k, i) as tf.Tensor3D), vs: this.values.map((v) => tf.gather(v, i) as tf.Tensor3D), last: tf.gather(this.last, i) as tf.Tensor2D };
    });
    this.mask = idx.map((r) => [...this.mask[r]!]);
    this.replace(next.ks, next.vs, next.last);
  }

  private replace(ks: tf.Tensor3D[], vs: tf.Tensor3D[], last: tf.Tensor2D): void {
    for (const t of [...this.keys, ...this.values, this.last]) t.dispose();
    this.keys = ks;
    this.values = vs;
    this.last = last;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values, this.last]) t.dispose();
    this.keys = [];
    this.values = [];
  }
}
