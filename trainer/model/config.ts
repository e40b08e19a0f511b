/**
 * BLIP-2 configuration with Hugging Face's names (`Blip2Config`'s config.json: `vision_config`, `qformer_config`,
 * `text_config`, `num_query_tokens`), so that the config.json of a BLIP-2 checkpoint loads as it is; LAVIS's
 * pre-training settings that config.json does not carry sit in `lavis_config`. Also the presets, and the parameter
 * manifest: every parameter's HF name, shape, and group.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../../common';
import type { ModelPresetName } from '../../common';

/** The EVA ViT (HF Blip2VisionConfig; LAVIS eva_vit.py). */
export interface Blip2VisionConfig {
  image_size: number;
  patch_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  /** Block LayerNorm eps (1e-6 in LAVIS). */
  layer_norm_eps: number;
  /**
   * Standard deviation of the fresh position and class embeddings (HF Blip2VisionConfig's `initializer_range`, which
   * transformers' `_init_weights` uses for exactly these two). Absent: 0.02, as every other fresh weight. Only a
   * randomly initialised ViT (the demo's and the tests' stand-in for a pre-trained one) is affected.
   */
  initializer_range?: number;
}

/** The Q-Former's BERT (HF Blip2QFormerConfig; LAVIS Qformer.py BertConfig). */
export interface Blip2QFormerConfig {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  max_position_embeddings: number;
  layer_norm_eps: number;
  pad_token_id: number;
  /** Layer i has cross-attention iff i % cross_attention_frequency === 0. */
  cross_attention_frequency: number;
  /** Width of the image embeddings the cross-attention keys/values read (= vision hidden_size). */
  encoder_hidden_size: number;
  /**
   * Standard deviation of the normal initialisation of the Q-Former side's weights (Q-Former, query tokens,
   * projections, heads, language_projection), HF's `initializer_range`. Absent: 0.02 (BERT's, and LAVIS's). A narrow
   * Q-Former trained from scratch needs more (about 1/sqrt(hidden_size)): at 0.02 the image reaches the queries too
   * weakly to be learned from in a short run.
   */
  initializer_range?: number;
}

/** The OPT decoder of stage 2 (HF OPTConfig); frozen. */
export interface OptConfig {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  ffn_dim: number;
  max_position_embeddings: number;
  pad_token_id: number;
  bos_token_id: number;
  eos_token_id: number;
}

/**
 * LAVIS Blip2Qformer settings that HF's config.json does not carry (HF's BLIP-2 is the stage-2 model; these belong
 * to stage-1 pre-training). Each with where it comes from.
 */
export interface LavisConfig {
  /** ITC projection dim (Blip2Qformer `embed_dim`, 256). */
  embed_dim: number;
  /** Caption length in tokens (Blip2Qformer `max_txt_len`, 32). */
  max_txt_len: number;
  /** `ln_vision` (= HF `vision_model.post_layernorm`) eps: LAVIS builds it as nn.LayerNorm, torch's default 1e-5. */
  ln_vision_eps: number;
  /** Initial ITC temperature (Blip2Qformer `temp`, 0.07). */
  temp_init: number;
  /** Label smoothing of the ITC and ITG cross-entropies (0.1 in LAVIS). */
  itc_label_smoothing: number;
  itg_label_smoothing: number;
  /** BERT tokenizer ids: [CLS], [SEP], and [DEC] (the bos token LAVIS adds; it replaces [CLS] for ITG). */
  cls_token_id: number;
  sep_token_id: number;
  dec_token_id: number;
  /** OPT's id of "\n": LAVIS Blip2OPT ends a caption with it (stage 2). */
  newline_token_id: number;
}

/** The whole model: HF Blip2Config's keys, plus `lavis_config`. */
export interface Blip2Config {
  vision_config: Blip2VisionConfig;
  qformer_config: Blip2QFormerConfig;
  text_config: OptConfig;
  /** Learned query tokens (32). */
  num_query_tokens: number;
  lavis_config: LavisConfig;
}

/** LAVIS's values (blip2_qformer.py, pretrain configs). */
export const LAVIS_DEFAULTS: LavisConfig = {
  embed_dim: 256,
  max_txt_len: 32,
  ln_vision_eps: 1e-5,
  temp_init: 0.07,
  itc_label_smoothing: 0.1,
  itg_label_smoothing: 0.1,
  cls_token_id: 101,
  sep_token_id: 102,
  dec_token_id: 30522,
  newline_token_id: 50118,
};

const bertBase: Blip2QFormerConfig = {
  vocab_size: 30523, // bert-base-uncased + [DEC]
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  intermediate_size: 3072,
  max_position_embeddings: 512,
  layer_norm_eps: 1e-12,
  pad_token_id: 0,
  cross_attention_frequency: 2,
  encoder_hidden_size: 1408,
};

const opt27b: OptConfig = {
  vocab_size: 50272,
  hidden_size: 2560,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  ffn_dim: 10240,
  max_position_embeddings: 2048,
  pad_token_id: 1,
  bos_token_id: 2,
  eos_token_id: 2,
};

/** facebook/opt-6.7b's shapes (HF OPTConfig). */
const opt67b: OptConfig = {
  vocab_size: 50272,
  hidden_size: 4096,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  ffn_dim: 16384,
  max_position_embeddings: 2048,
  pad_token_id: 1,
  bos_token_id: 2,
  eos_token_id: 2,
};

/** facebook/opt-125m's shapes (HF OPTConfig; its hidden size equals word_embed_proj_dim, so no projection). */
const opt125m: OptConfig = {
  vocab_size: 50272,
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  ffn_dim: 3072,
  max_position_embeddings: 2048,
  pad_token_id: 1,
  bos_token_id: 2,
  eos_token_id: 2,
};

const vitG: Blip2VisionConfig = { image_size: 224, patch_size: 14, hidden_size: 1408, num_hidden_layers: 39, num_attention_heads: 16, intermediate_size: 6144, layer_norm_eps: 1e-6 };

/** Named configurations, one per name that `model.preset` accepts (common/config.ts). `base` = `blip2-opt-2.7b`. */
export const PRESETS: Record<ModelPresetName, Blip2Config> = {
  /** Test-sized model (the shape of the golden set; tests read their config from golden.json). */
  tiny: {
    vision_config: { image_size: 32, patch_size: 8, hidden_size: 48, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 96, layer_norm_eps: 1e-6 },
    qformer_config: { ...bertBase, vocab_size: 100, hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 64, max_position_embeddings: 16, encoder_hidden_size: 48 },
    text_config: { vocab_size: 120, hidden_size: 40, num_hidden_layers: 2, num_attention_heads: 4, ffn_dim: 80, max_position_embeddings: 32, pad_token_id: 1, bos_token_id: 2, eos_token_id: 2 },
    num_query_tokens: 8,
    lavis_config: { ...LAVIS_DEFAULTS, embed_dim: 16, max_txt_len: 12, cls_token_id: 1, sep_token_id: 2, dec_token_id: 99, newline_token_id: 3 },
  },
  /**
   * The built-in demo's model (`blip2 launch` with no config): a small random ViT over 32px images, a Q-Former 128
   * wide with 2 layers that both cross-attend to the image, 16 queries, initialised at 0.08 (about 1/sqrt(128); at
   * BERT's 0.02 a Q-Former this narrow, trained from scratch, takes far longer to learn anything from the image), and
   * a small OPT-shaped LM for stage 2 with room for a question prompt. The ViT stands in for a pre-trained one, so
   * two of its settings keep what a caption names readable from its output:
   * - 4px patches: a patch's 48 values are the ViT's width, so the patch embedding loses nothing (8px patches, 192
   *   values into 48, lost the shapes of small objects);
   * - position embeddings at 0.3 (`vision_config.initializer_range`, as transformers initialises them): at 0.02 they
   *   were lost beside the patch content, and "above" or "left of" could not be told from the reverse (ITC preferred
   *   the true relation to a reversed one for 46 % of images after 15 epochs; 69–73 % with them at 0.3–0.5).
   */
  demo: {
    vision_config: { image_size: 32, patch_size: 4, hidden_size: 48, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 96, layer_norm_eps: 1e-6, initializer_range: 0.3 },
    qformer_config: {
      ...bertBase, vocab_size: 100, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 256, max_position_embeddings: 32,
      cross_attention_frequency: 1, encoder_hidden_size: 48, initializer_range: 0.08,
    },
    text_config: { vocab_size: 120, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, ffn_dim: 128, max_position_embeddings: 64, pad_token_id: 1, bos_token_id: 2, eos_token_id: 2 },
    num_query_tokens: 16,
    lavis_config: { ...LAVIS_DEFAULTS, embed_dim: 64, max_txt_len: 24, cls_token_id: 1, sep_token_id: 2, dec_token_id: 99, newline_token_id: 3 },
  },
  /**
   * Small Q-Former (4 layers, 256 wide) over a 257×512 image grid, with an opt-125m-shaped language model for
   * stage 2: the `bench:step --preset small` model.
   */
  small: {
    vision_config: { image_size: 224, patch_size: 14, hidden_size: 512, num_hidden_layers: 6, num_attention_heads: 8, intermediate_size: 2048, layer_norm_eps: 1e-6 },
    qformer_config: { ...bertBase, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024, encoder_hidden_size: 512 },
    text_config: opt125m,
    num_query_tokens: 32,
    lavis_config: LAVIS_DEFAULTS,
  },
  /** ViT-g/14 (39 blocks) + BERT-base Q-Former + OPT-2.7b shapes (LAVIS pretrain_opt2.7b; HF Salesforce/blip2-opt-2.7b). */
  'blip2-opt-2.7b': { vision_config: vitG, qformer_config: bertBase, text_config: opt27b, num_query_tokens: 32, lavis_config: LAVIS_DEFAULTS },
  /** The same Q-Former and ViT with OPT-6.7b (LAVIS pretrain_opt6.7b; HF Salesforce/blip2-opt-6.7b). */
  'blip2-opt-6.7b': { vision_config: vitG, qformer_config: bertBase, text_config: opt67b, num_query_tokens: 32, lavis_config: LAVIS_DEFAULTS },
  base: { vision_config: vitG, qformer_config: bertBase, text_config: opt27b, num_query_tokens: 32, lavis_config: LAVIS_DEFAULTS },
};

export function presetConfig(name: string): Blip2Config {
  const c = (PRESETS as Record<string, Blip2Config | undefined>)[name];
  if (!c) throw new UsageError(`unknown preset "${name}" (known: ${Object.keys(PRESETS).join(', ')})`);
  return structuredClone(c);
}

/**
 * A config.json as a `Blip2Config`: a BLIP-2 checkpoint's (HF keys; the LAVIS settings it lacks take LAVIS's
 * values, the keys we do not use are ignored) or one this project wrote. Every field the model reads must be a
 * finite number; a missing or wrong one is named.
 */
export function blip2ConfigFromJson(json: unknown, source = 'config.json'): Blip2Config {
  const o = (json ?? {}) as Record<string, unknown>;
  const section = (key: string): Record<string, unknown> => {
    const v = o[key];
    if (v === undefined || v === null || typeof v !== 'object') throw new UsageError(`${source}: "${key}" is missing (a BLIP-2 config.json has vision_config, qformer_config and text_config)`);
    return v as Record<string, unknown>;
  };
  const pick = <T extends object>(name: string, from: Record<string, unknown>, like: T, defaults?: Partial<T>): T => {
    const out: Record<string, number> = {};
    for (const key of Object.keys(like)) {
      const v = from[key] ?? (defaults as Record<string, unknown> | undefined)?.[key];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new UsageError(`${source}: ${name}.${key} must be a number, got ${JSON.stringify(v)}`);
      out[key] = v;
    }
    return out as T;
  };
  const base = PRESETS['blip2-opt-2.7b'];
  const numQuery = o.num_query_tokens ?? base.num_query_tokens;
  if (typeof numQuery !== 'number' || !Number.isInteger(numQuery) || numQuery < 1) throw new UsageError(`${source}: num_query_tokens must be a positive integer, got ${JSON.stringify(numQuery)}`);
  return {
    // HF's own defaults fill what a config.json may leave out (HF writes only non-default values).
    vision_config: withInitializerRange(pick('vision_config', section('vision_config'), base.vision_config, HF_VISION_DEFAULTS), section('vision_config'), source, 'vision_config'),
    qformer_config: withInitializerRange(pick('qformer_config', section('qformer_config'), base.qformer_config, HF_QFORMER_DEFAULTS), section('qformer_config'), source, 'qformer_config'),
    text_config: pick('text_config', section('text_config'), base.text_config, HF_OPT_DEFAULTS),
    num_query_tokens: numQuery,
    // transformers' Blip2Config calls the ITC projection width image_text_hidden_size.
    lavis_config: pick('lavis_config', (o.lavis_config ?? {}) as Record<string, unknown>, LAVIS_DEFAULTS, {
      ...LAVIS_DEFAULTS, ...(typeof o.image_text_hidden_size === 'number' ? { embed_dim: o.image_text_hidden_size } : {}),
    }),
  };
}

/** `initializer_range` when the config.json gives one (optional: absent means 0.02). */
function withInitializerRange<T extends { initializer_range?: number }>(q: T, from: Record<string, unknown>, source: string, section: string): T {
  const v = from.initializer_range;
  if (v === undefined) return q;
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new UsageError(`${source}: ${section}.initializer_range must be a positive number, got ${JSON.stringify(v)}`);
  return { ...q, initializer_range: v };
}

/** transformers' class defaults (Blip2VisionConfig, Blip2QFormerConfig, OPTConfig), for keys a config.json omits. */
const HF_VISION_DEFAULTS: Partial<Blip2VisionConfig> = { hidden_size: 1408, intermediate_size: 6144, num_hidden_layers: 39, num_attention_heads: 16, image_size: 224, patch_size: 14, layer_norm_eps: 1e-6 };
const HF_QFORMER_DEFAULTS: Partial<Blip2QFormerConfig> = {
  vocab_size: 30522, hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072, max_position_embeddings: 512,
  layer_norm_eps: 1e-12, pad_token_id: 0, cross_attention_frequency: 2, encoder_hidden_size: 1408,
};
const HF_OPT_DEFAULTS: Partial<OptConfig> = { vocab_size: 50272, hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, ffn_dim: 3072, max_position_embeddings: 2048, pad_token_id: 1, bos_token_id: 2, eos_token_id: 2 };

/** A model config.json file (a BLIP-2 checkpoint's, HF keys, or one this project wrote), read and checked. */
export function loadModelConfig(path: string): Blip2Config {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`model.config ${path}: cannot read it as JSON (${(e as Error).message})`);
  }
  return blip2ConfigFromJson(json, `model.config ${path}`);
}

/**
 * The golden set's config (golden.json["config"]: LAVIS's names, grouped as vision / qformer / opt) as a
 * `Blip2Config`. The README's table lists the same mapping.
 */
export function blip2ConfigFromLavis(c: { vision: Record<string, number>; qformer: Record<string, number>; opt: Record<string, number> }): Blip2Config {
  const { vision: v, qformer: q, opt: o } = c;
  return {
    vision_config: { image_size: v.image_size!, patch_size: v.patch_size!, hidden_size: v.hidden_size!, num_hidden_layers: v.num_layers!, num_attention_heads: v.num_heads!, intermediate_size: v.intermediate_size!, layer_norm_eps: v.layer_norm_eps! },
    qformer_config: {
      vocab_size: q.vocab_size!, hidden_size: q.hidden_size!, num_hidden_layers: q.num_layers!, num_attention_heads: q.num_heads!, intermediate_size: q.intermediate_size!,
      max_position_embeddings: q.max_position_embeddings!, layer_norm_eps: q.layer_norm_eps!, pad_token_id: q.pad_token_id!, cross_attention_frequency: q.cross_attention_freq!,
      encoder_hidden_size: q.encoder_hidden_size!,
    },
    text_config: { vocab_size: o.vocab_size!, hidden_size: o.hidden_size!, num_hidden_layers: o.num_layers!, num_attention_heads: o.num_heads!, ffn_dim: o.ffn_dim!, max_position_embeddings: o.max_position_embeddings!, pad_token_id: o.pad_token_id!, bos_token_id: o.bos_token_id!, eos_token_id: o.bos_token_id! },
    num_query_tokens: q.num_query_tokens!,
    lavis_config: {
      embed_dim: q.embed_dim!, max_txt_len: q.max_txt_len!, ln_vision_eps: v.ln_vision_eps!, temp_init: q.temp_init!, itc_label_smoothing: q.itc_label_smoothing!,
      itg_label_smoothing: q.itg_label_smoothing!, cls_token_id: q.cls_token_id!, sep_token_id: q.sep_token_id!, dec_token_id: q.dec_token_id!,
      newline_token_id: o.newline_token_id!,
    },
  };
}

/** OPT's learned positions are offset by 2 (HF OPTLearnedPositionalEmbedding): the table has max_position_embeddings + 2 rows. */
export const OPT_POSITION_OFFSET = 2;

/**
 * OPT's LayerNorm eps: HF OPTDecoder builds its LayerNorms as nn.LayerNorm without an eps, torch's default 1e-5
 * (OPTConfig has no eps key, so config.json cannot carry another value).
 */
export const OPT_LAYER_NORM_EPS = 1e-5;

/** Image tokens the Q-Former cross-attends to: patches + [CLS]. */
export function visionSeqLen(v: Blip2VisionConfig): number {
  return (v.image_size / v.patch_size) ** 2 + 1;
}

export function hasCrossAttention(q: Blip2QFormerConfig, layer: number): boolean {
  return layer % q.cross_attention_frequency === 0;
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
  const { vision_config: v, qformer_config: q, text_config: o } = config;
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
  for (let i = 0; i < v.num_hidden_layers; i++) {
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
  add('query_tokens', [1, config.num_query_tokens, H], 'qformer_query');
  add('embeddings.word_embeddings.weight', [q.vocab_size, H], 'qformer_text');
  add('embeddings.position_embeddings.weight', [q.max_position_embeddings, H], 'qformer_text');
  layerNorm('qformer.layernorm', H, 'qformer_query');
  for (let i = 0; i < q.num_hidden_layers; i++) {
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
  linear('vision_projection', config.lavis_config.embed_dim, H, 'qformer_text');
  linear('text_projection', config.lavis_config.embed_dim, H, 'qformer_text');
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
  add('language_model.model.decoder.embed_positions.weight', [o.max_position_embeddings + OPT_POSITION_OFFSET, O], 'language_model');
  for (let i = 0; i < o.num_hidden_layers; i++) {
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

/** Number of trainable scalars in `stage` (186,705,470 / 107,133,696 for blip2-opt-2.7b; 108,314,880 in stage 2 for blip2-opt-6.7b). */
export function trainableCount(config: Blip2Config, stage: Stage): number {
  const groups = new Set(trainableGroups(stage));
  return paramManifest(config)
    .filter((p) => groups.has(p.group))
    .reduce((n, p) => n + countElements(p.shape), 0);
}
