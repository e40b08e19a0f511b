/**
 * The OPT decoder of stage 2 with a key/value cache, for generation (search.ts's `StepDecoder`): one pass over the
 * prefix [soft prompt ; prompt tokens] fills every layer's keys and values, then each appended token costs one
 * position (its query against the cached keys). Same arithmetic as `optDecoder` (trainer/model/opt.ts) on float32
 * parameters (`language_model.*`): pre-LN layers, q·kᵀ/√d, ReLU FFN, final LayerNorm, tied LM head, positions
 * from the running count of real tokens (+2), padded prompt tokens masked as keys (left padding for batched prompts).
 */
import { tf } from '../engine';
import {
  attention, layerNorm, linear, optCausalMask, optLmHead, optPositionIds, prefixedMask, additiveMask,
  OPT_LAYER_NORM_EPS, type Blip2Config, type Params,
} from '../model';
import type { StepDecoder } from './search';

const DECODER = 'language_model.model.decoder';

/** A prompt after the soft prompt: token ids per row and their mask (0 = padding), all rows the same length. */
export interface PromptTokens {
  ids: number[][];
  mask: number[][];
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
  constructor(private readonly params: Params, private readonly config: Blip2Config, softPrompt: tf.Tensor3D, prompt: PromptTokens) {
    const [B, P, D] = softPrompt.shape;
    const T = prompt.ids[0]?.length ?? 0;
    this.mask = prefixedMask(P, prompt.mask);
    const full = this.mask;
    const cm = optCausalMask(full);
    const layers = config.text_config.num_hidden_layers;
    const kept = tf.tidy(() => {
      const tokens = T > 0
        ? tf.reshape(tf.gather(this.p('embed_tokens.weight'), tf.tensor1d(prompt.ids.flat(), 'int32')), [B, T, D])
        : tf.zeros([B, 0, D]);
      const positions = tf.reshape(tf.gather(this.p('embed_positions.weight'), tf.tensor1d(optPositionIds(full).flat(), 'int32')), [B, P + T, D]);
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
      const last = tf.reshape(tf.slice(x, [0, P + T - 1, 0], [B, 1, D]), [B, D]);
      return { ks, vs, last: layerNorm(params, `${DECODER}.final_layer_norm`, last, OPT_LAYER_NORM_EPS) as tf.Tensor2D };
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

  private p(name: string): tf.Tensor {
    const t = this.params.get(`${DECODER}.${name}`);
    if (!t) throw new Error(`parameter "${DECODER}.${name}" is missing: create or load the language_model group`);
    return t;
  }

  /** One OPTDecoderLayer (as optLayer) that also returns its keys and values [B,S,D]. */
  private layer(i: number, x: tf.Tensor3D, selfMask: tf.Tensor, past?: { k: tf.Tensor3D; v: tf.Tensor3D }): { x: tf.Tensor3D; k: tf.Tensor3D; v: tf.Tensor3D } {
    const pre = `${DECODER}.layers.${i}`;
    const h = layerNorm(this.params, `${pre}.self_attn_layer_norm`, x, OPT_LAYER_NORM_EPS);
    const q = linear(this.params, `${pre}.self_attn.q_proj`, h);
    let k = linear(this.params, `${pre}.self_attn.k_proj`, h) as tf.Tensor3D;
    let v = linear(this.params, `${pre}.self_attn.v_proj`, h) as tf.Tensor3D;
    if (past) {
      k = tf.concat([past.k, k], 1);
      v = tf.concat([past.v, v], 1);
    }
    const context = attention(q, k, v, this.config.text_config.num_attention_heads, selfMask);
    const x1 = tf.add(x, linear(this.params, `${pre}.self_attn.out_proj`, context));
    const h2 = layerNorm(this.params, `${pre}.final_layer_norm`, x1, OPT_LAYER_NORM_EPS);
    const ffn = linear(this.params, `${pre}.fc2`, tf.relu(linear(this.params, `${pre}.fc1`, h2)));
    return { x: tf.add(x1, ffn) as tf.Tensor3D, k, v };
  }

  logits(): Float32Array {
    return tf.tidy(() => optLmHead(this.params, this.last).dataSync() as Float32Array);
  }

  append(tokens: readonly number[]): void {
    const B = this.rows;
    if (tokens.length !== B) throw new Error(`append: ${tokens.length} tokens for ${B} rows`);
    const D = this.config.text_config.hidden_size;
    this.mask = this.mask.map((m) => [...m, 1]);
    const positions = this.mask.map((m) => m.reduce((a, b) => a + b, 0) - 1 + 2);
    const keyMask = this.mask;
    const next = tf.tidy(() => {
      const emb = tf.gather(this.p('embed_tokens.weight'), tf.tensor1d([...tokens], 'int32'));
      const pos = tf.gather(this.p('embed_positions.weight'), tf.tensor1d(positions, 'int32'));
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
      return { ks, vs, last: layerNorm(this.params, `${DECODER}.final_layer_norm`, tf.reshape(x, [B, D]), OPT_LAYER_NORM_EPS) as tf.Tensor2D };
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
