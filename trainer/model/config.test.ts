// Model configs use Hugging Face's names: a BLIP-2 checkpoint's config.json loads as it is, bad ones are named.
import { describe, expect, test } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blip2ConfigFromJson, blip2ConfigFromLavis, LAVIS_DEFAULTS, loadModelConfig, presetConfig, trainableCount } from './config';
import { hfConfigJson as writtenConfigJson } from './hf-checkpoint';

/** Shaped like the config.json of an HF BLIP-2 OPT-2.7b checkpoint (keys the model does not read included). */
const hfConfigJson = {
  architectures: ['Blip2ForConditionalGeneration'],
  model_type: 'blip-2',
  num_query_tokens: 32,
  initializer_factor: 1.0,
  use_decoder_only_language_model: true,
  qformer_config: {
    attention_probs_dropout_prob: 0.1, cross_attention_frequency: 2, encoder_hidden_size: 1408, hidden_act: 'gelu', hidden_size: 768,
    intermediate_size: 3072, layer_norm_eps: 1e-12, max_position_embeddings: 512, model_type: 'blip_2_qformer', num_attention_heads: 12,
    num_hidden_layers: 12, pad_token_id: 0, position_embedding_type: 'absolute', vocab_size: 30522,
  },
  text_config: {
    _name_or_path: 'facebook/opt-2.7b', activation_function: 'relu', bos_token_id: 2, do_layer_norm_before: true, eos_token_id: 50118,
    ffn_dim: 10240, hidden_size: 2560, max_position_embeddings: 2048, model_type: 'opt', num_attention_heads: 32, num_hidden_layers: 32,
    pad_token_id: 1, prefix: '</s>', torch_dtype: 'float16', vocab_size: 50272, word_embed_proj_dim: 2560,
  },
  vision_config: {
    hidden_act: 'gelu', hidden_size: 1408, image_size: 224, intermediate_size: 6144, layer_norm_eps: 1e-6, model_type: 'blip_2_vision_model',
    num_attention_heads: 16, num_channels: 3, num_hidden_layers: 39, patch_size: 14, qkv_bias: true,
  },
};

describe('model config', () => {
  test('an HF BLIP-2 config.json loads as it is; the LAVIS settings it lacks take LAVIS values', () => {
    const c = blip2ConfigFromJson(hfConfigJson);
    const preset = presetConfig('blip2-opt-2.7b');
    expect(c.vision_config).toEqual(preset.vision_config);
    expect(c.qformer_config).toEqual({ ...preset.qformer_config, vocab_size: 30522 }); // HF's Q-Former has no [DEC]
    expect(c.text_config).toEqual({ ...preset.text_config, eos_token_id: 50118 });
    expect(c.num_query_tokens).toBe(32);
    expect(c.lavis_config).toEqual(LAVIS_DEFAULTS);
    // stage 2 trains no text-side parameter, so the vocabulary does not change its count
    expect(trainableCount(c, 2)).toBe(107_133_696);
  });

  test('keys a config.json leaves out take transformers\' class defaults; a config this project wrote round-trips', () => {
    const sparse = { vision_config: {}, qformer_config: { hidden_size: 256 }, text_config: { hidden_size: 2560 } };
    const c = blip2ConfigFromJson(sparse);
    expect(c.qformer_config.hidden_size).toBe(256);
    expect(c.qformer_config.num_hidden_layers).toBe(12);
    expect(c.vision_config.num_hidden_layers).toBe(39);
    const small = presetConfig('small');
    expect(blip2ConfigFromJson(JSON.parse(JSON.stringify(small)))).toEqual(small);
  });

  test('qformer_config.initializer_range: optional, read from config.json, a bad value named', () => {
    const demo = presetConfig('demo');
    expect(blip2ConfigFromJson(JSON.parse(JSON.stringify(demo))).qformer_config.initializer_range).toBe(0.08);
    // The config.json that `blip2 export` writes (transformers' keys) keeps it too: the demo model round-trips.
    expect(blip2ConfigFromJson(JSON.parse(JSON.stringify(writtenConfigJson(demo))))).toEqual(demo);
    expect(blip2ConfigFromJson(JSON.parse(JSON.stringify(presetConfig('tiny')))).qformer_config).not.toHaveProperty('initializer_range');
    const bad = JSON.parse(JSON.stringify(demo)) as { qformer_config: Record<string, unknown> };
    bad.qformer_config.initializer_range = -1;
    expect(() => blip2ConfigFromJson(bad)).toThrow(/qformer_config\.initializer_range must be a positive number, got -1/);
  });

  test('model.config files: read and checked, a missing or broken file named', () => {
    const dir = mkdtempSync(join(tmpdir(), 'blip2-config-'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(hfConfigJson));
    writeFileSync(join(dir, 'broken.json'), '{"vision_config": ');
    expect(loadModelConfig(join(dir, 'config.json')).num_query_tokens).toBe(32);
    expect(() => loadModelConfig(join(dir, 'broken.json'))).toThrow(/model.config .*broken.json: cannot read it as JSON/);
    expect(() => loadModelConfig(join(dir, 'none.json'))).toThrow(/model.config .*none.json: cannot read it as JSON \(ENOENT/);
  });

  test('a missing section or a wrong value is named', () => {
    expect(() => blip2ConfigFromJson({ vision_config: {}, qformer_config: {} }, 'cfg.json')).toThrow(/cfg.json: "text_config" is missing/);
    const bad = structuredClone(hfConfigJson) as unknown as Record<string, Record<string, unknown>>;
    bad.qformer_config!.num_hidden_layers = 'twelve';
    expect(() => blip2ConfigFromJson(bad)).toThrow(/qformer_config.num_hidden_layers must be a number, got "twelve"/);
    expect(() => blip2ConfigFromJson({ ...hfConfigJson, num_query_tokens: 0 })).toThrow(/num_query_tokens must be a positive integer/);
  });

  test('the golden set\'s LAVIS-named config maps onto the same model as the tiny preset', () => {
    const lavis = {
      vision: { image_size: 32, patch_size: 8, hidden_size: 48, num_layers: 2, num_heads: 4, intermediate_size: 96, layer_norm_eps: 1e-6, ln_vision_eps: 1e-5 },
      qformer: {
        vocab_size: 100, hidden_size: 32, num_layers: 4, num_heads: 4, intermediate_size: 64, max_position_embeddings: 16, layer_norm_eps: 1e-12,
        cross_attention_freq: 2, encoder_hidden_size: 48, num_query_tokens: 8, embed_dim: 16, max_txt_len: 12, pad_token_id: 0, cls_token_id: 1,
        sep_token_id: 2, dec_token_id: 99, itc_label_smoothing: 0.1, itg_label_smoothing: 0.1, temp_init: 0.07,
      },
      opt: { vocab_size: 120, hidden_size: 40, num_layers: 2, num_heads: 4, ffn_dim: 80, max_position_embeddings: 32, layer_norm_eps: 1e-5, pad_token_id: 1, bos_token_id: 2, newline_token_id: 3, position_offset: 2 },
    };
    expect(blip2ConfigFromLavis(lavis)).toEqual(presetConfig('tiny'));
  });
});
