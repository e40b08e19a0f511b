// Presets and parameter counts, parameter creation, loading and saving, and the FP16-resident ViT.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { narrowToF16, readSafetensors, writeSafetensors, type SafeTensor } from '../../common';
import {
  CheckpointMismatchError,
  createParams,
  disposeParams,
  FrozenWeights,
  loadParams,
  paramManifest,
  presetConfig,
  saveParams,
  trainableCount,
  trainableNames,
  visionSeqLen,
  VisionBackbone,
} from './index';
import { initEngine, tf } from '../engine';

beforeAll(async () => {
  await initEngine();
});

describe('presets and parameter counts', () => {
  test('blip2-opt-2.7b trains 186,705,470 parameters in stage 1 and 107,133,696 in stage 2', () => {
    const config = presetConfig('blip2-opt-2.7b');
    expect(trainableCount(config, 1)).toBe(186_705_470);
    expect(trainableCount(config, 2)).toBe(107_133_696);
    expect(presetConfig('base')).toEqual(config);
  });

  test('presets have the documented shapes', () => {
    const base = presetConfig('blip2-opt-2.7b');
    expect(visionSeqLen(base.vision_config)).toBe(257);
    expect(base.vision_config.num_hidden_layers).toBe(39);
    const small = presetConfig('small');
    expect(visionSeqLen(small.vision_config)).toBe(257);
    expect(small.vision_config.hidden_size).toBe(512);
    expect(small.qformer_config).toMatchObject({ num_hidden_layers: 4, hidden_size: 256, num_attention_heads: 4, intermediate_size: 1024, vocab_size: 30523, cross_attention_frequency: 2, encoder_hidden_size: 512 });
    expect(small.num_query_tokens).toBe(32);
    const spec = new Map(paramManifest(small).map((p) => [p.name, p.shape]));
    expect(spec.get('qformer.encoder.layer.2.crossattention.attention.key.weight')).toEqual([256, 512]);
    expect(spec.has('qformer.encoder.layer.1.crossattention.attention.key.weight')).toBe(false);
    // stage 2's LM of the small preset has opt-125m's shapes
    expect(small.text_config).toMatchObject({ hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, ffn_dim: 3072, vocab_size: 50272, max_position_embeddings: 2048 });
    expect(spec.get('language_model.model.decoder.embed_positions.weight')).toEqual([2050, 768]);
    expect(spec.get('language_projection.weight')).toEqual([768, 256]);
  });

  test('stage 2 drops the text-only Q-Former parts and adds the language projection', () => {
    const config = presetConfig('tiny');
    const s2 = new Set(trainableNames(config, 2));
    expect(s2.has('language_projection.weight')).toBe(true);
    expect(s2.has('embeddings.word_embeddings.weight')).toBe(false);
    expect(s2.has('qformer.encoder.layer.0.intermediate.dense.weight')).toBe(false);
    expect(s2.has('qformer.encoder.layer.0.intermediate_query.dense.weight')).toBe(true);
    expect(s2.has('vision_model.post_layernorm.weight')).toBe(true);
  });
});

describe('parameters', () => {
  test('createParams initialises as the original and is deterministic', () => {
    const config = presetConfig('tiny');
    const before = tf.memory().numTensors;
    const a = createParams(config, 1);
    const b = createParams(config, 1);
    expect([...a.keys()]).toEqual(trainableNames(config, 1));
    expect(a.get('temp')!.dataSync()[0]).toBeCloseTo(0.07, 7);
    expect(Array.from(a.get('qformer.layernorm.weight')!.dataSync()).every((v) => v === 1)).toBe(true);
    expect(Array.from(a.get('itm_head.bias')!.dataSync()).every((v) => v === 0)).toBe(true);
    const w = Array.from(a.get('embeddings.word_embeddings.weight')!.dataSync());
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    expect(std).toBeGreaterThan(0.017);
    expect(std).toBeLessThan(0.023);
    expect(Array.from(a.get('query_tokens')!.dataSync())).toEqual(Array.from(b.get('query_tokens')!.dataSync()));
    // *_query FFNs start as copies of the text FFNs (LAVIS Blip2Qformer.__init__)
    expect(Array.from(a.get('qformer.encoder.layer.1.intermediate_query.dense.weight')!.dataSync())).toEqual(Array.from(a.get('qformer.encoder.layer.1.intermediate.dense.weight')!.dataSync()));
    expect(Array.from(a.get('qformer.encoder.layer.0.attention.attention.key.weight')!.dataSync())).not.toEqual(Array.from(a.get('qformer.encoder.layer.0.attention.attention.query.weight')!.dataSync()));
    disposeParams(a);
    disposeParams(b);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('qformer_config.initializer_range sets the Q-Former side\'s initial std; the ViT and the LM keep 0.02', () => {
    const config = presetConfig('demo');
    expect(config.qformer_config.initializer_range).toBe(0.08);
    const q = createParams(config, 3, { stage: 2 });
    const frozen = createParams(config, 3, { groups: ['vision', 'language_model'] });
    // A sample std over n normal draws has a relative standard error of about 1/sqrt(2n); the bound is 5 of those.
    const close = (t: tf.Tensor, want: number) => {
      const v = Array.from(t.dataSync());
      const std = Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
      expect(Math.abs(std / want - 1), `std ${std} of ${v.length} draws`).toBeLessThan(5 / Math.sqrt(2 * v.length));
    };
    close(q.get('qformer.encoder.layer.0.crossattention.attention.value.weight')!, 0.08); // 128 x 48
    close(q.get('query_tokens')!, 0.08); // 16 x 128
    close(q.get('language_projection.weight')!, 0.08); // 64 x 128
    close(frozen.get('vision_model.encoder.layers.0.mlp.fc1.weight')!, 0.02);
    close(frozen.get('language_model.model.decoder.layers.0.fc1.weight')!, 0.02);
    disposeParams(q);
    disposeParams(frozen);
    // The presets without it keep their JSON (and so their checkpoints' config hash) as before.
    expect('initializer_range' in presetConfig('tiny').qformer_config).toBe(false);
  });

  test('vision_config.initializer_range sets the ViT\'s position and class embeddings (as transformers does), nothing else', () => {
    const config = presetConfig('demo');
    expect(config.vision_config.initializer_range).toBe(0.3);
    const close = (t: tf.Tensor, want: number) => {
      const v = Array.from(t.dataSync());
      const std = Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
      expect(Math.abs(std / want - 1), `std ${std} of ${v.length} draws`).toBeLessThan(5 / Math.sqrt(2 * v.length));
    };
    const v = createParams(config, 4, { groups: ['vision'] });
    close(v.get('vision_model.embeddings.position_embedding')!, 0.3); // 65 x 48
    close(v.get('vision_model.embeddings.class_embedding')!, 0.3);
    close(v.get('vision_model.embeddings.patch_embedding.weight')!, 0.02);
    close(v.get('vision_model.encoder.layers.0.self_attn.qkv.weight')!, 0.02);
    disposeParams(v);
    // The F16 stand-in of benchmarks draws with the same standard deviations.
    const f = FrozenWeights.random(config, 'vision', 4).widen(['vision_model.embeddings.']);
    close(f.get('vision_model.embeddings.position_embedding')!, 0.3);
    close(f.get('vision_model.embeddings.patch_embedding.weight')!, 0.02);
    disposeParams(f);
    expect('initializer_range' in presetConfig('tiny').vision_config).toBe(false);
  });

  test('save then load round-trips; loading checks names and shapes both ways, naming file and tensor', async () => {
    const config = presetConfig('tiny');
    const dir = mkdtempSync(join(tmpdir(), 'params-'));
    const path = join(dir, 'p.safetensors');
    const params = createParams(config, 2);
    await saveParams(path, params);
    const before = tf.memory().numTensors;
    const back = loadParams(path, config);
    for (const [n, t] of params) expect(Array.from(back.get(n)!.dataSync()), n).toEqual(Array.from(t.dataSync()));
    disposeParams(back);
    expect(tf.memory().numTensors).toBe(before);

    const file = readSafetensors(path);
    const edit = (f: (m: Map<string, SafeTensor>) => void) => {
      const m = new Map(file.tensors);
      f(m);
      const p = join(dir, `edited-${Math.random()}.safetensors`);
      writeSafetensors(p, m);
      return p;
    };
    const missing = edit((m) => m.delete('itm_head.bias'));
    expect(() => loadParams(missing, config)).toThrow(CheckpointMismatchError);
    expect(() => loadParams(missing, config)).toThrow(new RegExp(`${missing}: .*missing itm_head\\.bias`));
    const unexpected = edit((m) => m.set('bogus.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) }));
    expect(() => loadParams(unexpected, config)).toThrow(/unexpected bogus\.weight/);
    const shape = edit((m) => m.set('itm_head.bias', { dtype: 'F32', shape: [3], data: new Float32Array(3) }));
    expect(() => loadParams(shape, config)).toThrow(/wrong shape itm_head\.bias \[3\] \(model \[2\]\)/);
    expect(tf.memory().numTensors).toBe(before);
    disposeParams(params);
  });
});

describe('frozen ViT', () => {
  test('an F16 checkpoint stays 16-bit resident (≤ 2.1 bytes per parameter) and encodes without leaks', async () => {
    const config = presetConfig('tiny');
    const vit = createParams(config, 3, { groups: ['vision'] });
    const dir = mkdtempSync(join(tmpdir(), 'vit-'));
    const path = join(dir, 'vit16.safetensors');
    const tensors = new Map<string, SafeTensor>();
    for (const [n, t] of vit) tensors.set(n, { dtype: 'F16', shape: t.shape, data: narrowToF16(t.dataSync()) });
    writeSafetensors(path, tensors);
    const fp16 = VisionBackbone.load(path, config);
    const fp32 = await VisionBackbone.fromParams(vit, config);
    expect(fp16.residentBytes / fp16.paramCount).toBeLessThanOrEqual(2.1);
    expect(fp32.residentBytes / fp32.paramCount).toBe(4);
    const before = tf.memory().numTensors;
    const pixels = tf.randomNormal([2, 3, config.vision_config.image_size, config.vision_config.image_size], 0, 1, 'float32', 4);
    const a = fp16.encode(pixels);
    const b = fp32.encode(pixels);
    expect(a.shape).toEqual([2, visionSeqLen(config.vision_config), config.vision_config.hidden_size]);
    // fp16-rounded weights: close to the float32 model, not equal
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
    expect(diff).toBeGreaterThan(0);
    expect(diff).toBeLessThan(1e-2);
    for (const t of [pixels, a, b]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(() => VisionBackbone.load(path, presetConfig('small'))).toThrow(CheckpointMismatchError);
    disposeParams(vit);
  });
});
