/**
 * The frozen EVA ViT (LAVIS eva_vit.py VisionTransformer; HF Blip2VisionModel without post_layernorm).
 * Patch conv, [CLS], learned positions, pre-LN blocks with q/v bias and no k bias, exact-erf GELU, no final norm.
 *
 * Weights stay resident in the dtype of the file they came from: an F16 checkpoint is held as raw 16-bit data
 * (tfjs has no float16 tensor) and each block is widened to float32 only while it runs, then released.
 */
import { visionSeqLen, type Blip2Config } from './config';
import { tf } from '../engine';
import { gelu, layerNorm, linear, mergeHeads, splitHeads } from './layers';
import type { Params } from './params';
import { ModelInputError } from './errors';
import { FrozenWeights } from './frozen-weights';

export class VisionBackbone {
  private constructor(
    readonly config: Blip2Config,
    private readonly weights: FrozenWeights,
  ) {}

  /**
   * Load the ViT (`vision_model.*` except `post_layernorm`) from safetensors file(s). F16 and BF16 stay 16-bit, F32
   * stays 32-bit unless `fp16` narrows it. Every ViT name must be present with its shape; names the model does not
   * know are rejected (from the headers, before any data is read).
   */
  static load(files: string | string[], config: Blip2Config, options: { fp16?: boolean } = {}): VisionBackbone {
    return new VisionBackbone(config, FrozenWeights.load(files, config, 'vision', options));
  }

  /** A backbone from float32 tensors (e.g. `createParams(config, seed, {groups: ['vision']})`), narrowed to F16 when asked. */
  static async fromParams(params: Params, config: Blip2Config, options: { fp16?: boolean } = {}): Promise<VisionBackbone> {
    return new VisionBackbone(config, await FrozenWeights.fromParams(params, config, 'vision', options));
  }

  /** Number of frozen scalars. */
  get paramCount(): number {
    return this.weights.paramCount;
  }

  /** Bytes held by the weights in JS memory (2 per parameter for an F16 checkpoint). */
  get residentBytes(): number {
    return this.weights.residentBytes;
  }

  /**
   * pixelValues [B,3,S,S] -> last block output [B, 1 + (S/p)², hidden] (before ln_vision). No gradient is kept.
   * Each block's weights exist as float32 tensors only while that block runs.
   */
  encode(pixelValues: tf.Tensor): tf.Tensor3D {
    const v = this.config.vision_config;
    const [b, c, h, w] = pixelValues.shape as [number, number, number, number];
    if (c !== 3 || h !== v.image_size || w !== v.image_size) {
      throw new ModelInputError(`pixel_values shape ${JSON.stringify(pixelValues.shape)} must be [B, 3, ${v.image_size}, ${v.image_size}]`);
    }
    const emb = this.weights.widen(['vision_model.embeddings.']);
    let x: tf.Tensor3D;
    try {
      x = tf.tidy(() => {
        const p = v.patch_size;
        const g = v.image_size / p;
        // Conv2d(k=p, s=p) as a matmul over non-overlapping patches, flattened in the weight's (c, ky, kx) order.
        const patches = tf.reshape(tf.transpose(tf.reshape(pixelValues, [b, 3, g, p, g, p]), [0, 2, 4, 1, 3, 5]), [b * g * g, 3 * p * p]); // [B,N,3pp]
        const wConv = tf.reshape(emb.get('vision_model.embeddings.patch_embedding.weight')!, [v.hidden_size, 3 * p * p]); // [V,3pp]
        const tokens = tf.reshape(tf.add(tf.matMul(patches, wConv, false, true), emb.get('vision_model.embeddings.patch_embedding.bias')!), [b, g * g, v.hidden_size]); // [B,N,V]
        const cls = tf.tile(emb.get('vision_model.embeddings.class_embedding')!, [b, 1, 1]); // [B,1,V]
        return tf.add(tf.concat([cls, tokens], 1), emb.get('vision_model.embeddings.position_embedding')!) as tf.Tensor3D; // [B,P,V]
      });
    } finally {
      for (const t of emb.values()) t.dispose();
    }
    for (let i = 0; i < v.num_hidden_layers; i++) {
      const blockParams = this.weights.widen([`vision_model.encoder.layers.${i}.`]);
      try {
        const next = tf.tidy(() => visionBlock(blockParams, this.config, i, x));
        x.dispose();
        x = next;
      } finally {
        for (const t of blockParams.values()) t.dispose();
      }
    }
    if (x.shape[1] !== visionSeqLen(v)) throw new ModelInputError(`internal: vision sequence ${x.shape[1]} != ${visionSeqLen(v)}`);
    return x;
  }
}

/** EVA Block: x += proj(attn(norm1(x))); x += fc2(gelu(fc1(norm2(x)))). x [B,P,V] -> [B,P,V]. */
export function visionBlock(params: Params, config: Blip2Config, i: number, x: tf.Tensor3D): tf.Tensor3D {
  const v = config.vision_config;
  const p = `vision_model.encoder.layers.${i}`;
  const V = v.hidden_size;
  const h1 = layerNorm(params, `${p}.layer_norm1`, x, v.layer_norm_eps); // [B,P,V]
  // qkv bias = cat(q_bias, zeros, v_bias): the key has no bias.
  const qkvBias = tf.concat([params.get(`${p}.self_attn.q_bias`)!, tf.zeros([V]), params.get(`${p}.self_attn.v_bias`)!]); // [3V]
  const qkv = tf.add(tf.matMul(tf.reshape(h1, [-1, V]), params.get(`${p}.self_attn.qkv.weight`)!, false, true), qkvBias); // [B·P,3V]
  const [q, k, val] = tf.split(qkv, 3, 1).map((t) => tf.reshape(t, x.shape)); // 3 × [B,P,V]
  const hd = V / v.num_attention_heads;
  const qh = tf.mul(splitHeads(q!, v.num_attention_heads), hd ** -0.5); // [B,n,P,d], scaled before q·kᵀ as EVA
  const probs = tf.softmax(tf.matMul(qh, splitHeads(k!, v.num_attention_heads), false, true)); // [B,n,P,P]
  const ctx = mergeHeads(tf.matMul(probs, splitHeads(val!, v.num_attention_heads))); // [B,P,V]
  const x1 = tf.add(x, linear(params, `${p}.self_attn.projection`, ctx)); // [B,P,V]
  const h2 = layerNorm(params, `${p}.layer_norm2`, x1, v.layer_norm_eps);
  const mlp = linear(params, `${p}.mlp.fc2`, gelu(linear(params, `${p}.mlp.fc1`, h2))); // [B,P,V]
  return tf.add(x1, mlp) as tf.Tensor3D;
}
