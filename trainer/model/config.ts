/**
 * BLIP-2 configuration, mirroring the keys of ../shared/golden/golden.json["config"] (snake_case, as HF
 * config.json files), the presets, and the parameter manifest: every parameter's HF name, shape, and group.
 */
import { UsageError } from '../../common';

/** EVA ViT (LAVIS eva_vit.py / HF Blip2VisionConfig). */
export interface VisionConfig {
  image_size: number;
  patch_size: number;
  hidden_size: number;
  num_layers: number;
  num_heads: number;
  intermediate_size: number;
  /** Block LayerNorm eps (1e-6 in LAVIS). */
  layer_norm_eps: number;
  /** `ln_vision` (= HF `post_layernorm`) eps: torch default 1e-5 in LAVIS. */
  ln_vision_eps: number;
}

/** Q-Former (LAVIS Qformer.py BERT config + Blip2Qformer extras). */
export interface QformerConfig {
  vocab_size: number;
  hidden_size: number;
  num_layers: number;
  num_heads: number;
  intermediate_size: number;
  max_position_embeddings: number;
  layer_norm_eps: number;
  /** Layer i has cross-attention iff i % cross_attention_freq === 0. */
  cross_attention_freq: number;
  /** Width of the image embeddings the cross-attention keys/values read (= vision hidden_size). */
  encoder_hidden_size: number;
  num_query_tokens: number;
  /** ITC projection dim (`embed_dim`). */
  embed_dim: number;
  max_txt_len: number;
  pad_token_id: number;
  cls_token_id: number;
  sep_token_id: number;
  /** [DEC] (bos) id that replaces [CLS] for ITG. */
  dec_token_id: number;
  itc_label_smoothing: number;
  itg_label_smoothing: number;
  temp_init: number;
}

/** OPT decoder (stage 2); only its projection is trainable. */
export interface OptConfig {
  vocab_size: number;
  hidden_size: number;
  num_layers: number;
  num_heads: number;
  ffn_dim: number;
  max_position_embeddings: number;
  layer_norm_eps: number;
  pad_token_id: number;
  bos_token_id: number;
  newline_token_id: number;
  position_offset: number;
}

export interface Blip2Config {
  vision: VisionConfig;
  qformer: QformerConfig;
  opt: OptConfig;
}

const bertQformer = (over: Partial<QformerConfig>): QformerConfig => ({
  vocab_size: 30523,
  hidden_size: 768,
  num_layers: 12,
  num_heads: 12,
  intermediate_size: 3072,
  max_position_embeddings: 512,
  layer_norm_eps: 1e-12,
  cross_attention_freq: 2,
  encoder_hidden_size: 1408,
  num_query_tokens: 32,
  embed_dim: 256,
  max_txt_len: 32,
  pad_token_id: 0,
  cls_token_id: 101,
  sep_token_id: 102,
  dec_token_id: 30522,
  itc_label_smoothing: 0.1,
  itg_label_smoothing: 0.1,
  temp_init: 0.07,
  ...over,
});

const opt27b: OptConfig = {
  vocab_size: 50272,
  hidden_size: 2560,
  num_layers: 32,
  num_heads: 32,
  ffn_dim: 10240,
  max_position_embeddings: 2048,
  layer_norm_eps: 1e-5,
  pad_token_id: 1,
  bos_token_id: 2,
  newline_token_id: 50118,
  position_offset: 2,
};

/** Named configurations. `base` is an alias of `blip2-opt-2.7b`. */
export const PRESETS: Record<string, Blip2Config> = {
  /** Test-sized model (the shape of the golden set; tests read their config from golden.json). */
  tiny: {
    vision: { image_size: 32, patch_size: 8, hidden_size: 48, num_layers: 2, num_heads: 4, intermediate_size: 96, layer_norm_eps: 1e-6, ln_vision_eps: 1e-5 },
    qformer: bertQformer({
      vocab_size: 100, hidden_size: 32, num_layers: 4, num_heads: 4, intermediate_size: 64, max_position_embeddings: 16,
      encoder_hidden_size: 48, num_query_tokens: 8, embed_dim: 16, max_txt_len: 12, cls_token_id: 1, sep_token_id: 2, dec_token_id: 99,
    }),
    opt: { vocab_size: 120, hidden_size: 40, num_layers: 2, num_heads: 4, ffn_dim: 80, max_position_embeddings: 32, layer_norm_eps: 1e-5, pad_token_id: 1, bos_token_id: 2, newline_token_id: 3, position_offset: 2 },
  },
  /** Small Q-Former (4 layers, 256 wide) over a 257×512 image grid: the `bench:step --preset small` model. */
  small: {
    vision: { image_size: 224, patch_size: 14, hidden_size: 512, num_layers: 6, num_heads: 8, intermediate_size: 2048, layer_norm_eps: 1e-6, ln_vision_eps: 1e-5 },
    qformer: bertQformer({ hidden_size: 256, num_layers: 4, num_heads: 4, intermediate_size: 1024, encoder_hidden_size: 512 }),
    opt: opt27b,
  },
  /** ViT-g/14 (39 blocks) + BERT-base Q-Former + OPT-2.7b shapes (LAVIS pretrain_opt2.7b). */
  'blip2-opt-2.7b': {
    vision: { image_size: 224, patch_size: 14, hidden_size: 1408, num_layers: 39, num_heads: 16, intermediate_size: 6144, layer_norm_eps: 1e-6, ln_vision_eps: 1e-5 },
    qformer: bertQformer({}),
    opt: opt27b,
  },
};
PRESETS.base = PRESETS['blip2-opt-2.7b']!;

export function presetConfig(name: string): Blip2Config {
  const c = PRESETS[name];
  if (!c) throw new UsageError(`unknown preset "${name}" (known: ${Object.keys(PRESETS).join(', ')})`);
  return structuredClone(c);
}

/** Image tokens the Q-Former cross-attends to: patches + [CLS]. */
export function visionSeqLen(v: VisionConfig): number {
  return (v.image_size / v.patch_size) ** 2 + 1;
}

export function hasCrossAttention(q: QformerConfig, layer: number): boolean {
  return layer % q.cross_attention_freq === 0;
}

/**
 * Which part of the model a parameter belongs to:
 * - `vision`: the frozen ViT (`vision_model.*` except `post_layernorm`)
 * - `qformer_query`: trainable in both stages (ln_vision, query_tokens, Q-Former query path)
 * - `qformer_text`: trainable in stage 1 only (embeddings, text FFNs, projections, ITM/ITG heads, temp)
 * - `language_projection`: trainable in stage 2 only
 * - `language_model`: the frozen OPT decoder
 */
export type ParamGroup = 'vision' | 'qformer_query' | 'qformer_text' | 'language_projection' | 'language_model';

export interface ParamSpec {
  name: string;
  shape: number[];
  group: ParamGroup;
  /** How `createParams` initialises it (as the original modules do). */
  init: 'normal' | 'zeros' | 'ones' | 'temp';
}

export type Stage = 1 | 2;

/** Every parameter of the model in checkpoint order, HF names (golden names for the LAVIS-only extras). */
export function paramManifest(config: Blip2Config): ParamSpec[] {
  const { vision: v, qformer: q, opt: o } = config;
  const out: ParamSpec[] = [];
  const add = (name: string, shape: number[], group: ParamGroup, init: ParamSpec['init'] = 'normal') => out.push({ name, shape, group, init });
  const linear = (prefix: string, outDim: number, inDim: number, group: ParamGroup) => {
    add(`${prefix}.weight`, [outDim, inDim], group);
    add(`${prefix}.bias`, [outDim], group, 'zeros');
  };
  const layerNorm = (prefix: string, dim: number, group: ParamGroup) => {
    add(`${prefix}.weight`, [dim], group, 'ones');
    add(`${prefix}.bias`, [dim], group, 'zeros');
  };
  // Frozen EVA ViT (LAVIS visual_encoder.*)
  const V = v.hidden_size;
  add('vision_model.embeddings.class_embedding', [1, 1, V], 'vision');
  add('vision_model.embeddings.patch_embedding.weight', [V, 3, v.patch_size, v.patch_size], 'vision');
  add('vision_model.embeddings.patch_embedding.bias', [V], 'vision', 'zeros');
  add('vision_model.embeddings.position_embedding', [1, visionSeqLen(v), V], 'vision');
  for (let i = 0; i < v.num_layers; i++) {
    const p = `vision_model.encoder.layers.${i}`;
    layerNorm(`${p}.layer_norm1`, V, 'vision');
    add(`${p}.self_attn.qkv.weight`, [3 * V, V], 'vision');
    add(`${p}.self_attn.q_bias`, [V], 'vision', 'zeros');
    add(`${p}.self_attn.v_bias`, [V], 'vision', 'zeros');
    linear(`${p}.self_attn.projection`, V, V, 'vision');
    layerNorm(`${p}.layer_norm2`, V, 'vision');
    linear(`${p}.mlp.fc1`, v.intermediate_size, V, 'vision');
    linear(`${p}.mlp.fc2`, V, v.intermediate_size, 'vision');
  }
  // ln_vision (trainable)
  layerNorm('vision_model.post_layernorm', V, 'qformer_query');
  // Q-Former
  const H = q.hidden_size;
  add('query_tokens', [1, q.num_query_tokens, H], 'qformer_query');
  add('embeddings.word_embeddings.weight', [q.vocab_size, H], 'qformer_text');
  add('embeddings.position_embeddings.weight', [q.max_position_embeddings, H], 'qformer_text');
  layerNorm('qformer.layernorm', H, 'qformer_query');
  for (let i = 0; i < q.num_layers; i++) {
    const p = `qformer.encoder.layer.${i}`;
    for (const n of ['query', 'key', 'value']) linear(`${p}.attention.attention.${n}`, H, H, 'qformer_query');
    linear(`${p}.attention.output.dense`, H, H, 'qformer_query');
    layerNorm(`${p}.attention.output.LayerNorm`, H, 'qformer_query');
    if (hasCrossAttention(q, i)) {
      linear(`${p}.crossattention.attention.query`, H, H, 'qformer_query');
      linear(`${p}.crossattention.attention.key`, H, q.encoder_hidden_size, 'qformer_query');
      linear(`${p}.crossattention.attention.value`, H, q.encoder_hidden_size, 'qformer_query');
      linear(`${p}.crossattention.output.dense`, H, H, 'qformer_query');
      layerNorm(`${p}.crossattention.output.LayerNorm`, H, 'qformer_query');
    }
    linear(`${p}.intermediate.dense`, q.intermediate_size, H, 'qformer_text');
    linear(`${p}.output.dense`, H, q.intermediate_size, 'qformer_text');
    layerNorm(`${p}.output.LayerNorm`, H, 'qformer_text');
    linear(`${p}.intermediate_query.dense`, q.intermediate_size, H, 'qformer_query');
    linear(`${p}.output_query.dense`, H, q.intermediate_size, 'qformer_query');
    layerNorm(`${p}.output_query.LayerNorm`, H, 'qformer_query');
  }
  // Heads
  linear('vision_projection', q.embed_dim, H, 'qformer_text');
  linear('text_projection', q.embed_dim, H, 'qformer_text');
  linear('itm_head', 2, H, 'qformer_text');
  // Extras absent from the HF checkpoint:
  // - `temp`: LAVIS Blip2Qformer.temp, the ITC temperature (a 0-d Parameter, init 0.07, divides the similarities).
  // - `cls.predictions.*`: LAVIS Qformer.cls (BertOnlyMLMHead), the ITG head; its decoder weight is tied to
  //   `embeddings.word_embeddings.weight` and its decoder bias is `cls.predictions.bias`.
  add('temp', [], 'qformer_text', 'temp');
  linear('cls.predictions.transform.dense', H, H, 'qformer_text');
  layerNorm('cls.predictions.transform.LayerNorm', H, 'qformer_text');
  add('cls.predictions.bias', [q.vocab_size], 'qformer_text', 'zeros');
  // Stage 2
  linear('language_projection', o.hidden_size, H, 'language_projection');
  const O = o.hidden_size;
  add('language_model.model.decoder.embed_tokens.weight', [o.vocab_size, O], 'language_model');
  add('language_model.model.decoder.embed_positions.weight', [o.max_position_embeddings + o.position_offset, O], 'language_model');
  for (let i = 0; i < o.num_layers; i++) {
    const p = `language_model.model.decoder.layers.${i}`;
    for (const n of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) linear(`${p}.self_attn.${n}`, O, O, 'language_model');
    layerNorm(`${p}.self_attn_layer_norm`, O, 'language_model');
    linear(`${p}.fc1`, o.ffn_dim, O, 'language_model');
    linear(`${p}.fc2`, O, o.ffn_dim, 'language_model');
    layerNorm(`${p}.final_layer_norm`, O, 'language_model');
  }
  layerNorm('language_model.model.decoder.final_layer_norm', O, 'language_model');
  return out;
}

/** Groups trained in each stage (the ViT and the language model are always frozen). */
export function trainableGroups(stage: Stage): ParamGroup[] {
  return stage === 1 ? ['qformer_query', 'qformer_text'] : ['qformer_query', 'language_projection'];
}

/** Names of the parameters trained in `stage`, in manifest order. */
export function trainableNames(config: Blip2Config, stage: Stage): string[] {
  const groups = new Set(trainableGroups(stage));
  return paramManifest(config)
    .filter((p) => groups.has(p.group))
    .map((p) => p.name);
}

export function countElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Number of trainable scalars in `stage` (186,705,470 / 107,133,696 for blip2-opt-2.7b). */
export function trainableCount(config: Blip2Config, stage: Stage): number {
  const groups = new Set(trainableGroups(stage));
  return paramManifest(config)
    .filter((p) => groups.has(p.group))
    .reduce((n, p) => n + countElements(p.shape), 0);
}
